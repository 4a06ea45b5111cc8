// Score finishing and the fp32 softmax, shared by both attention paths so that they round at the
// same places. Written as plain loops the compiler vectorises: at prefill a step finishes and
// soft-maxes millions of scores, and scalar exp and roundings cost as much as the dot products.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cpu/bf16.h"

namespace mla {

// exp(x) for the softmax's arguments x = score - max <= 0, within 2 ulp of std::exp, in a form that
// vectorises (no call, no branch). x < -87 gives 0 (exp(-87) = 1.6e-38, below what a probability
// next to the maximum's exp(0) = 1 can hold); -inf gives 0 and NaN stays NaN.
inline float exp_nonpositive(float x) {
  const float clamped = x < -87.0f ? -87.0f : x;  // NaN passes through: the comparison is false
  // n = round(x / ln 2) by the 1.5 * 2^23 shifter; its low bits are n as an integer.
  const float shifter = 12582912.0f;
  const float shifted = clamped * 1.44269504088896341f + shifter;
  const float n = shifted - shifter;
  // r = x - n ln2 in two steps (Cody-Waite), |r| <= ln2 / 2.
  float r = clamped - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  // Taylor to degree 7: the first omitted term is below 5e-9 relative on |r| <= ln2 / 2.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  uint32_t shifted_bits, shifter_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
  std::memcpy(&shifter_bits, &shifter, sizeof(shifter_bits));
  // 2^n built in the exponent field: n >= -126 after the clamp, a normal number.
  const uint32_t power_bits = (shifted_bits - shifter_bits + 127u) << 23;
  float power;
  std::memcpy(&power, &power_bits, sizeof(power));
  const float result = p * power;
  return x < -87.0f ? 0.0f : result;
}

// One query row's scores, from dot products to probabilities (docs/design.md steps 6-7).
struct ScoreRow {
  float* scores = nullptr;      // [len]: the (main) dot products in, the probabilities out
  const float* tail = nullptr;  // split bf16 scores: the rope part's dot products; else nullptr
  const float* mask = nullptr;  // the additive mask's row, or nullptr
  int64_t len = 0;
  float scale = 1.0f;
  bool round_to_bf16 = false;
  float* lse = nullptr;  // where given: log(sum of exp(score)) over the row, -inf when len is 0
};

// score = scale * (dot_main + dot_tail), plus the mask, on every entry, then softmax_row. In bf16
// mode DeepSeek rounds each einsum result, their sum, the scaled score and the masked score to
// bf16 (split: two einsums, main and rope part; otherwise one einsum and one rounding).
void scores_to_probs(const ScoreRow& row);

// In place over scores[0, len): p = exp(s - max) / sum, in fp32 with the sum in double.
// Entries of -inf become 0. The caller guarantees at least one finite entry, or len 0 (nothing
// written). In bf16 mode the probabilities are rounded before the value product (docs/design.md
// step 7). Returns the row's log-sum-exp, max + log(sum) (-inf for len 0): what merging partial
// softmaxes over split keys needs.
float softmax_row(float* scores, int64_t len, bool round_probs_to_bf16);

}  // namespace mla
