#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/finite_check.h"

namespace mla {

namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kNone = ~0ull;

__global__ void __launch_bounds__(kThreads)
    first_non_finite_kernel(const float* values, int64_t count, unsigned long long* first) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (!isfinite(values[index])) atomicMin(first, static_cast<unsigned long long>(index));
  }
}

}  // namespace

int64_t first_non_finite_cuda(const float* values, int64_t count, unsigned long long* scratch, cudaStream_t stream) {
  unsigned long long first = kNone;
  CUDA_CHECK(cudaMemcpyAsync(scratch, &first, sizeof(first), cudaMemcpyHostToDevice, stream));
  if (count > 0) {
    first_non_finite_kernel<<<cuda_detail::grid_for(count, kThreads), kThreads, 0, stream>>>(values, count, scratch);
    CUDA_CHECK_LAUNCH("first_non_finite_kernel");
  }
  CUDA_CHECK(cudaMemcpyAsync(&first, scratch, sizeof(first), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return first == kNone ? -1 : static_cast<int64_t>(first);
}

}  // namespace mla
