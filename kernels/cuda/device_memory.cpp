#include "kernels/cuda/device_memory.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/cuda_check.h"

namespace mla {

namespace {

std::atomic<int64_t> in_use_bytes{0};
std::atomic<int64_t> peak_bytes{0};

void raise_peak(int64_t candidate) {
  int64_t peak = peak_bytes.load(std::memory_order_relaxed);
  while (candidate > peak && !peak_bytes.compare_exchange_weak(peak, candidate, std::memory_order_relaxed)) {
  }
}

}  // namespace

DeviceMemoryUse device_memory_use() {
  return {in_use_bytes.load(std::memory_order_relaxed), peak_bytes.load(std::memory_order_relaxed)};
}

void reset_device_memory_peak() { peak_bytes.store(in_use_bytes.load(std::memory_order_relaxed)); }

void note_device_allocation(int64_t bytes) {
  const int64_t now = in_use_bytes.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  if (bytes > 0) raise_peak(now);
}

int64_t device_memory_used_by_driver() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return static_cast<int64_t>(total_bytes - free_bytes);
}

int64_t device_memory_used_by_this_process() {
  // A fixed command; its lines are "pid, MiB", one per process and GPU.
  FILE* pipe =
      ::popen("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null", "r");
  if (pipe == nullptr) return -1;
  const long self = static_cast<long>(::getpid());
  int64_t mib = 0;
  bool listed = false;
  std::array<char, 256> line{};
  while (std::fgets(line.data(), static_cast<int>(line.size()), pipe) != nullptr) {
    char* rest = nullptr;
    const long pid = std::strtol(line.data(), &rest, 10);
    if (rest == line.data() || *rest != ',' || pid != self) continue;
    char* end = nullptr;
    const long long used = std::strtoll(rest + 1, &end, 10);
    if (end == rest + 1) continue;  // "[N/A]" where the driver cannot say
    mib += used;
    listed = true;
  }
  const int status = ::pclose(pipe);
  return listed && status == 0 ? mib * (int64_t{1} << 20) : -1;
}

}  // namespace mla
