#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/vector_ops.h"

namespace mla {

// Each loop below has its conditions hoisted so that its body vectorises.
MLA_VECTOR_CLONES void scores_to_probs(const ScoreRow& row) {
  float* scores = row.scores;
  const float scale = row.scale;
  const int64_t len = row.len;
  if (!row.round_to_bf16) {
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) scores[t] *= scale;
    if (row.mask != nullptr) {
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) scores[t] += row.mask[t];
    }
  } else {
    if (row.tail != nullptr) {
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) {
        const float dot =
            round_to_bf16_branchless(round_to_bf16_branchless(scores[t]) + round_to_bf16_branchless(row.tail[t]));
        scores[t] = round_to_bf16_branchless(dot * scale);
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < len; ++t)
        scores[t] = round_to_bf16_branchless(round_to_bf16_branchless(scores[t]) * scale);
    }
    if (row.mask != nullptr) {
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) scores[t] = round_to_bf16_branchless(scores[t] + row.mask[t]);
    }
  }
  const float lse = softmax_row(scores, len, row.round_to_bf16);
  if (row.lse != nullptr) *row.lse = lse;
}

MLA_VECTOR_CLONES float softmax_row(float* scores, int64_t len, bool round_probs_to_bf16) {
  // Sixteen running maxima, one per lane: a select per lane vectorises in GCC and clang alike, where
  // clang cannot vectorise a float max written as one reduction (without -ffast-math's no-NaN).
  constexpr int64_t kLanes = 16;
  float lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, -std::numeric_limits<float>::infinity());
  int64_t t_full = 0;
  for (; t_full + kLanes <= len; t_full += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const float score = scores[t_full + lane];
      lane_max[lane] = score > lane_max[lane] ? score : lane_max[lane];
    }
  }
  for (int64_t t = t_full; t < len; ++t)
    lane_max[t - t_full] = scores[t] > lane_max[t - t_full] ? scores[t] : lane_max[t - t_full];
  float max_score = lane_max[0];
  for (int64_t lane = 1; lane < kLanes; ++lane) max_score = lane_max[lane] > max_score ? lane_max[lane] : max_score;
    // Two loops: with the fp32 exponentials and the double sum in one, GCC 12 vectorises neither.
#pragma omp simd
  for (int64_t t = 0; t < len; ++t) scores[t] = exp_nonpositive(scores[t] - max_score);
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < len; ++t) sum += scores[t];
  const float inv_sum = static_cast<float>(1.0 / sum);
  if (round_probs_to_bf16) {
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) scores[t] = round_to_bf16_branchless(scores[t] * inv_sum);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) scores[t] *= inv_sum;
  }
  return len == 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(max_score + std::log(sum));
}

}  // namespace mla
