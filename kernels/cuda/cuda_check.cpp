#include "kernels/cuda/cuda_check.h"

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

}  // namespace mla
