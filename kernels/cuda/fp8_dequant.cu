#include <cuda_fp8.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/fp8_dequant.h"

namespace mla {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float fp8_e4m3_to_float(uint8_t code) {
  // Every e4m3 value (NaN included) is exact in fp16, so the conversion through half is exact.
  const __half_raw half_bits = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(half_bits));
}

__global__ void __launch_bounds__(kThreads) fp8_dequant_kernel(Fp8DequantParams p) {
  const int64_t count = p.rows * p.cols;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / p.cols;
    const int64_t col = index % p.cols;
    const float scale = p.scale[(row / kFp8BlockSize) * p.scale_cols + col / kFp8BlockSize];
    const float value = __fmul_rn(fp8_e4m3_to_float(p.weight[index]), scale);
    p.out[index] = p.round_to_bf16 ? cuda_detail::round_bf16(value) : value;
  }
}

}  // namespace

void fp8_dequant_blocks_cuda(const Fp8DequantParams& params, cudaStream_t stream) {
  const int64_t count = params.rows * params.cols;
  if (count == 0) return;
  fp8_dequant_kernel<<<cuda_detail::grid_for(count, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("fp8_dequant_kernel");
}

}  // namespace mla
