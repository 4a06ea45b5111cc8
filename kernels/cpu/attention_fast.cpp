#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

namespace {

// One query row of one head: scores into `scores`, softmax, then out = sum_t p_t * value_t.
void attend_one_row(const AttentionParams& p, int64_t b, int64_t h, int64_t s, float* scores, float* accumulator) {
  const float* query = p.q + (b * p.seq + s) * p.q_token_stride + h * p.q_head_stride;
  const float* keys = p.keys + b * p.key_batch_stride + h * p.key_head_stride;
  const float* values = p.values + b * p.value_batch_stride + h * p.value_head_stride;
  const bool split = p.round_to_bf16 && p.score_split > 0;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const int64_t visible = attention_visible_len(p, s);

  // Raw dot products four keys at a time (the query loaded once for four), then the rest.
  float* dot_main = scores;  // finished in place below
  int64_t t = 0;
  for (; t + 4 <= visible; t += 4) {
    const float* four[4] = {keys + t * p.key_pos_stride, keys + (t + 1) * p.key_pos_stride,
                            keys + (t + 2) * p.key_pos_stride, keys + (t + 3) * p.key_pos_stride};
    dot4_f32(query, four, main_dim, dot_main + t);
  }
  for (; t < visible; ++t) dot_main[t] = dot_f32(query, keys + t * p.key_pos_stride, main_dim);

  for (t = 0; t < visible; ++t) {
    const float* key = keys + t * p.key_pos_stride;
    const float dot_tail = split ? dot_f32(query + main_dim, key + main_dim, p.score_dim - main_dim) : 0.0f;
    float score = finish_score(dot_main[t], dot_tail, p.scale, split, p.round_to_bf16);
    if (p.mask != nullptr) {
      score += p.mask[s * p.mask_stride + t];
      if (p.round_to_bf16) score = round_to_bf16(score);
    }
    scores[t] = score;
  }
  softmax_row(scores, visible, p.round_to_bf16);

  for (int64_t i = 0; i < p.value_dim; ++i) accumulator[i] = 0.0f;
  for (t = 0; t + 4 <= visible; t += 4) {
    const float* four[4] = {values + t * p.value_pos_stride, values + (t + 1) * p.value_pos_stride,
                            values + (t + 2) * p.value_pos_stride, values + (t + 3) * p.value_pos_stride};
    axpy4_f32(scores + t, four, accumulator, p.value_dim);
  }
  for (; t < visible; ++t) {
    if (scores[t] != 0.0f) axpy_f32(scores[t], values + t * p.value_pos_stride, accumulator, p.value_dim);
  }
  float* out = p.out + (b * p.seq + s) * p.out_token_stride + h * p.out_head_stride;
  for (int64_t i = 0; i < p.value_dim; ++i) out[i] = p.round_to_bf16 ? round_to_bf16(accumulator[i]) : accumulator[i];
}

}  // namespace

void attention_fast(const AttentionParams& p) {
#pragma omp parallel
  {
    // Per thread: one row of scores and one output accumulator, reused for every row it takes.
    std::vector<float> scores(static_cast<size_t>(p.kv_len));
    std::vector<float> accumulator(static_cast<size_t>(p.value_dim));
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t h = 0; h < p.n_heads; ++h) {
        for (int64_t s = 0; s < p.seq; ++s) attend_one_row(p, b, h, s, scores.data(), accumulator.data());
      }
    }
  }
}

int64_t attention_fast_workspace_bytes(const AttentionParams& p, int threads) {
  return static_cast<int64_t>(threads) * (p.kv_len + p.value_dim) * static_cast<int64_t>(sizeof(float));
}

}  // namespace mla
