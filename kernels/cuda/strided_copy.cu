#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/strided_copy.h"

namespace mla {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) strided_copy_kernel(StridedCopyParams p) {
  struct Offsets {
    int64_t src, dst;
  };
  cuda_detail::for_each_vector_piece(
      p.batch * p.outer * p.inner, p.width,
      [&](int64_t vector) {
        const int64_t j = vector % p.inner;
        const int64_t i = (vector / p.inner) % p.outer;
        const int64_t n = vector / (p.inner * p.outer);
        return Offsets{n * p.src_batch_stride + i * p.src_outer_stride + j * p.src_inner_stride,
                       n * p.dst_batch_stride + i * p.dst_outer_stride + j * p.dst_inner_stride};
      },
      [&](const Offsets& at, int64_t k) { return p.src[at.src + k]; },
      [&](const Offsets& at, int64_t k, float value) {
        p.dst[at.dst + k] = p.round_to_bf16 ? cuda_detail::round_bf16(value) : value;
      });
}

}  // namespace

void strided_copy_cuda(const StridedCopyParams& params, cudaStream_t stream) {
  const int64_t count = params.batch * params.outer * params.inner * params.width;
  if (count == 0) return;
  // A warp per piece of up to kPieceWidth elements (grid_for caps the grid; warps then loop).
  const int64_t pieces = count / std::max<int64_t>(params.width, 1) *
                         ((params.width + cuda_detail::kPieceWidth - 1) / cuda_detail::kPieceWidth);
  strided_copy_kernel<<<cuda_detail::grid_for(pieces * 32, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("strided_copy_kernel");
}

}  // namespace mla
