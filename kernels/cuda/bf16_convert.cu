#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"

namespace mla {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) f32_to_bf16_kernel(Bf16ConvertParams p) {
  const int64_t count = p.rows * p.cols;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / p.cols;
    const int64_t col = index % p.cols;
    p.dst[index] = __float2bfloat16_rn(p.src[row * p.src_stride + col]);
  }
}

}  // namespace

void f32_to_bf16_cuda(const Bf16ConvertParams& params, cudaStream_t stream) {
  const int64_t count = params.rows * params.cols;
  if (count == 0) return;
  f32_to_bf16_kernel<<<cuda_detail::grid_for(count, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
}

}  // namespace mla
