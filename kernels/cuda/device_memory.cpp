#include "kernels/cuda/device_memory.h"

#include <cuda_runtime.h>

#include <atomic>

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

}  // namespace mla
