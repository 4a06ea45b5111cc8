#include "parallel/thread_placement.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <thread>

#include "kernels/cpu/gemm.h"

namespace mla {

namespace {

// Runs `mask_of(thread)` on each thread of a `threads`-thread team and applies it to that thread
// (sched_setaffinity with pid 0 sets the calling thread only).
bool set_team_affinity(int threads, const std::function<void(int, cpu_set_t&)>& mask_of) {
  bool ok = true;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    mask_of(omp_get_thread_num(), mask);
    ok = sched_setaffinity(0, sizeof(mask), &mask) == 0;
  }
  return ok;
}

}  // namespace

std::vector<int> allowed_cpus() {
  cpu_set_t mask;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(mask), &mask) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &mask)) cpus.push_back(cpu);
  }
  return cpus;
}

std::vector<int> choose_thread_cpus(const PlacementRequest& request) {
  const auto allowed_count = static_cast<int>(request.allowed.size());
  if (request.threads < 1 || request.threads > allowed_count) return {};
  int first = 0;
  // Allowed on every CPU of the node: the launcher did not bind, so every rank sees the same set.
  // Either every rank's slice fits, or none pins: pinned ranks beside floating ones would share
  // cores with them unevenly.
  if (request.local_size > 1 && allowed_count >= request.node_cpus) {
    if (request.local_size * request.threads > allowed_count) return {};
    first = request.local_rank * request.threads;
  }
  return std::vector<int>(request.allowed.begin() + first, request.allowed.begin() + first + request.threads);
}

bool pin_openmp_threads(const std::vector<int>& cpus) {
  if (cpus.empty()) return false;
  return set_team_affinity(static_cast<int>(cpus.size()),
                           [&](int thread, cpu_set_t& mask) { CPU_SET(cpus[static_cast<size_t>(thread)], &mask); });
}

bool unpin_openmp_threads(int threads, const std::vector<int>& cpus) {
  if (threads < 1 || cpus.empty()) return false;
  return set_team_affinity(threads, [&](int, cpu_set_t& mask) {
    for (const int cpu : cpus) CPU_SET(cpu, &mask);
  });
}

std::string describe_cpus(const std::vector<int>& cpus) {
  std::string text;
  for (size_t i = 0; i < cpus.size();) {
    size_t end = i + 1;
    while (end < cpus.size() && cpus[end] == cpus[end - 1] + 1) ++end;
    if (!text.empty()) text += ",";
    text += std::to_string(cpus[i]);
    if (end - i > 1) text += "-" + std::to_string(cpus[end - 1]);
    i = end;
  }
  return text;
}

RankThreads configure_rank_threads(int requested, bool pin, int local_rank, int local_size) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Read once, before any pinning: afterwards the calling thread's own mask is one CPU.
  static const std::vector<int> allowed = allowed_cpus();
  int bound = allowed.empty() ? cores : static_cast<int>(allowed.size());
  const char* placed_by = nullptr;
  for (const char* variable : {"OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"}) {
    if (std::getenv(variable) != nullptr) placed_by = variable;
  }
  if (placed_by != nullptr && omp_get_num_places() > 0) {
    // The OpenMP runtime has already bound this thread to the first place: count all places' CPUs.
    bound = 0;
    for (int place = 0; place < omp_get_num_places(); ++place) bound += omp_get_place_num_procs(place);
  }
  RankThreads result;
  result.count = requested > 0 ? requested : std::max(1, std::min(bound, cores / local_size));
  omp_set_num_threads(result.count);
  set_blas_threads(result.count);

  if (placed_by != nullptr) {
    result.placement = std::string("placed as ") + placed_by + " says";
    return result;
  }
  PlacementRequest request;
  request.threads = result.count;
  request.allowed = allowed;
  request.node_cpus = cores;
  request.local_rank = local_rank;
  request.local_size = local_size;
  const std::vector<int> cpus = pin ? choose_thread_cpus(request) : std::vector<int>{};
  if (!cpus.empty() && pin_openmp_threads(cpus)) {
    result.placement = "pinned to CPUs " + describe_cpus(cpus);
    return result;
  }
  // An earlier call (mla_bench's previous point) may have pinned the pool: free it again.
  unpin_openmp_threads(result.count, allowed);
  if (!pin) {
    result.placement = "not pinned (run.pin_threads: false)";
  } else if (result.count > bound) {
    result.placement = "not pinned: " + std::to_string(result.count) + " threads on " + std::to_string(bound) + " CPUs";
  } else if (cpus.empty()) {
    result.placement = "not pinned: " + std::to_string(local_size) + " ranks x " + std::to_string(result.count) +
                       " threads share this node's " + std::to_string(bound) + " CPUs, unbound";
  } else {
    result.placement = "not pinned: the kernel refused sched_setaffinity";
  }
  return result;
}

}  // namespace mla
