// Score finishing and the fp32 softmax, shared by both attention paths so that they round at the
// same places.
#pragma once

#include <cstdint>

#include "kernels/cpu/bf16.h"

namespace mla {

// score = scale * (dot_main + dot_tail). In bf16 mode DeepSeek rounds each einsum result, their
// sum, and the scaled score to bf16 (split: two einsums; otherwise dot_tail is 0 and one rounding).
inline float finish_score(float dot_main, float dot_tail, float scale, bool split, bool round_bf16) {
  if (!round_bf16) return (dot_main + dot_tail) * scale;
  const float dot = split ? round_to_bf16(round_to_bf16(dot_main) + round_to_bf16(dot_tail))
                          : round_to_bf16(dot_main + dot_tail);
  return round_to_bf16(dot * scale);
}

// In place over scores[0, len): p = exp(s - max) / sum, in fp32 with the sum in double.
// Entries of -inf become 0. The caller guarantees at least one finite entry. In bf16 mode the
// probabilities are rounded before the value product (SPEC.md step 7).
void softmax_row(float* scores, int64_t len, bool round_probs_to_bf16);

}  // namespace mla
