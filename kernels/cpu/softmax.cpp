#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

namespace mla {

void softmax_row(float* scores, int64_t len, bool round_probs_to_bf16) {
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) max_score = scores[t] > max_score ? scores[t] : max_score;
  double sum = 0.0;
  for (int64_t t = 0; t < len; ++t) {
    scores[t] = std::exp(scores[t] - max_score);
    sum += scores[t];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  for (int64_t t = 0; t < len; ++t) {
    const float prob = scores[t] * inv_sum;
    scores[t] = round_probs_to_bf16 ? round_to_bf16(prob) : prob;
  }
}

}  // namespace mla
