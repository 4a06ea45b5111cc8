#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/strided_copy.h"

namespace mla {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) strided_copy_kernel(StridedCopyParams p) {
  const int64_t count = p.outer * p.inner * p.width;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = index % p.width;
    const int64_t j = (index / p.width) % p.inner;
    const int64_t i = index / (p.width * p.inner);
    const float value = p.src[i * p.src_outer_stride + j * p.src_inner_stride + k];
    p.dst[i * p.dst_outer_stride + j * p.dst_inner_stride + k] = p.round_to_bf16 ? cuda_detail::round_bf16(value) : value;
  }
}

}  // namespace

void strided_copy_cuda(const StridedCopyParams& params, cudaStream_t stream) {
  const int64_t count = params.outer * params.inner * params.width;
  if (count == 0) return;
  strided_copy_kernel<<<cuda_detail::grid_for(count, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("strided_copy_kernel");
}

}  // namespace mla
