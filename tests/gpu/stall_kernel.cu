#include "kernels/cuda/cuda_check.h"
#include "tests/gpu/stall_kernel.h"

namespace mla::test {

namespace {

__global__ void stall_kernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

}  // namespace

void stall_stream(cudaStream_t stream, double seconds) {
  int device = 0, clock_khz = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
  stall_kernel<<<1, 1, 0, stream>>>(static_cast<long long>(seconds * clock_khz * 1e3));
  CUDA_CHECK_LAUNCH("stall_kernel");
}

}  // namespace mla::test
