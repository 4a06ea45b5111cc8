#include "kernels/cuda/bf16_convert.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"

namespace mla {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) f32_to_bf16_kernel(Bf16ConvertParams p) {
  struct Offsets {
    int64_t src, dst;
  };
  cuda_detail::for_each_vector_piece(
      p.rows, p.cols,
      [&](int64_t row) {
        const int64_t source_row = p.rows_per_batch > 0 ? (row / p.rows_per_batch) * p.src_batch_stride +
                                                              (row % p.rows_per_batch) * p.src_stride
                                                        : row * p.src_stride;
        return Offsets{source_row, row * p.cols};
      },
      [&](const Offsets& at, int64_t col) { return p.src[at.src + col]; },
      [&](const Offsets& at, int64_t col, float value) { p.dst[at.dst + col] = __float2bfloat16_rn(value); });
}

}  // namespace

void f32_to_bf16_cuda(const Bf16ConvertParams& params, cudaStream_t stream) {
  const int64_t count = params.rows * params.cols;
  if (count == 0) return;
  const int64_t pieces = params.rows * ((params.cols + cuda_detail::kPieceWidth - 1) / cuda_detail::kPieceWidth);
  f32_to_bf16_kernel<<<cuda_detail::grid_for(pieces * 32, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
}

}  // namespace mla
