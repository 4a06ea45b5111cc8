#include "parallel/thread_placement.h"

#include <omp.h>
#include <sched.h>

#include <functional>

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

}  // namespace mla
