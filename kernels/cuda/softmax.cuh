// Score finishing and the fp32 softmax as device code, shared by the fused fast-path kernel and
// the standard path's softmax kernel: the twins of kernels/cpu/softmax (finish_score,
// softmax_row), rounding at the same places.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/device_math.cuh"

namespace mla::cuda_detail {

__device__ __forceinline__ float finish_score(float dot_main, float dot_tail, float scale, bool split, bool round) {
  if (!round) return __fmul_rn(__fadd_rn(dot_main, dot_tail), scale);
  const float dot = split ? round_bf16(__fadd_rn(round_bf16(dot_main), round_bf16(dot_tail)))
                          : round_bf16(__fadd_rn(dot_main, dot_tail));
  return round_bf16(__fmul_rn(dot, scale));
}

// The additive mask, when there is one, after the scale (DeepSeek adds it to the scaled scores).
__device__ __forceinline__ float apply_mask(const AttentionParams& p, float score, int64_t s, int64_t t) {
  if (p.mask == nullptr) return score;
  const float masked = __fadd_rn(score, p.mask[s * p.mask_stride + t]);
  return p.round_to_bf16 ? round_bf16(masked) : masked;
}

// One warp's exact softmax over a row held in shared memory, as the CPU twin computes it: the max,
// then exp(score - max) written back in place, summed in double. Returns 1 / sum, by which the
// caller scales (and rounds) each exp into its probability.
__device__ __forceinline__ float warp_softmax_exps(float* row, int64_t len, int lane) {
  float max_score = -INFINITY;
  for (int64_t t = lane; t < len; t += 32) max_score = fmaxf(max_score, row[t]);
  max_score = warp_max(max_score);
  double sum = 0.0;
  for (int64_t t = lane; t < len; t += 32) {
    const float e = expf(row[t] - max_score);
    row[t] = e;
    sum += e;
  }
  return static_cast<float>(1.0 / warp_sum(sum));
}

__device__ __forceinline__ int64_t visible_len(const AttentionParams& p, int64_t s) {
  if (p.mask != nullptr) return p.kv_len;
  const int64_t last_visible = p.start_pos + s + 1;
  return last_visible < p.kv_len ? last_visible : p.kv_len;
}

}  // namespace mla::cuda_detail
