#include "kernels/cuda/cuda_check.h"

#include <map>
#include <mutex>
#include <utility>

namespace mla {

void throw_cuda_error(const char* call, const char* file, int line, const std::string& detail) {
  int device = -1;
  const std::string where = cudaGetDevice(&device) == cudaSuccess ? " (device " + std::to_string(device) + ")" : "";
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + where + ": " + detail);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" status for later calls
    return 0;
  }
  return count;
}

int64_t reserve_dynamic_shared_bytes(const void* kernel, int64_t needed_bytes) {
  static std::mutex mutex;
  static std::map<int, int> max_bytes;                            // per device
  static std::map<std::pair<int, const void*>, int64_t> granted;  // per device and kernel
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  int& limit = max_bytes[device];
  if (limit == 0) CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  int64_t& allowed = granted[{device, kernel}];
  if (needed_bytes > allowed && needed_bytes <= limit) {
    CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(needed_bytes)));
    allowed = needed_bytes;
  }
  return limit;
}

}  // namespace mla
