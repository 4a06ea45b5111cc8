#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/rope.h"

namespace mla {

namespace {

constexpr int kThreads = 256;

// One thread per (token, vector, pair).
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeCudaParams p) {
  const int64_t pairs = p.batch * p.seq * p.vecs_per_token * p.half_dim;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < pairs;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = index % p.half_dim;
    const int64_t vec = (index / p.half_dim) % p.vecs_per_token;
    const int64_t token = index / (p.half_dim * p.vecs_per_token);
    const int64_t position = p.token_positions != nullptr ? p.token_positions[token] : p.start_pos + token % p.seq;
    const float cos_value = p.cos[position * p.half_dim + i];
    const float sin_value = p.sin[position * p.half_dim + i];
    float* pair = p.x + token * p.token_stride + vec * p.vec_stride + 2 * i;
    const float re = pair[0];
    const float im = pair[1];
    // Unfused, as the CPU twin rounds each product.
    float rotated_re = __fsub_rn(__fmul_rn(re, cos_value), __fmul_rn(im, sin_value));
    float rotated_im = __fadd_rn(__fmul_rn(re, sin_value), __fmul_rn(im, cos_value));
    if (p.round_to_bf16) {
      rotated_re = cuda_detail::round_bf16(rotated_re);
      rotated_im = cuda_detail::round_bf16(rotated_im);
    }
    pair[0] = rotated_re;
    pair[1] = rotated_im;
  }
}

}  // namespace

void rope_apply_cuda(const RopeCudaParams& params, cudaStream_t stream) {
  if (params.token_positions == nullptr && (params.start_pos < 0 || params.start_pos + params.seq > params.positions)) {
    throw std::out_of_range("rope: positions past the table (max_seq_len)");
  }
  const int64_t pairs = params.batch * params.seq * params.vecs_per_token * params.half_dim;
  if (pairs == 0) return;
  rope_kernel<<<cuda_detail::grid_for(pairs, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace mla
