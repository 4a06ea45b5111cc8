#include <algorithm>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax.h"

namespace mla {

namespace {

bool uses_split_scores(const AttentionParams& p) { return p.round_to_bf16 && p.score_split > 0; }

// scores[rows, cols] = Q[rows, k] K[cols, k]^T for one head, Q and K starting `offset` values in.
void score_gemm(const AttentionParams& p, const float* query, const float* keys, int64_t offset, int64_t k,
                int64_t rows, int64_t cols, float* scores) {
  GemmParams g;
  g.transpose_b = true;
  g.m = rows;
  g.n = cols;
  g.k = k;
  g.a = query + offset;
  g.lda = p.q_token_stride;
  g.b = keys + offset;
  g.ldb = p.key_pos_stride;
  g.c = scores;
  g.ldc = cols;
  gemm(g);
}

// One chunk of query rows [s_begin, s_begin + rows) of sequence b, head h.
void attend_chunk(const AttentionParams& p, int64_t b, int64_t h, int64_t s_begin, int64_t rows, float* scores,
                  float* tail_scores) {
  const int64_t cols = attention_visible_len(p, s_begin + rows - 1);
  const float* query = p.q + (b * p.seq + s_begin) * p.q_token_stride + h * p.q_head_stride;
  const float* keys = p.keys + b * p.key_batch_stride + h * p.key_head_stride;
  const bool split = uses_split_scores(p);
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  score_gemm(p, query, keys, 0, main_dim, rows, cols, scores);
  if (split) score_gemm(p, query, keys, main_dim, p.score_dim - main_dim, rows, cols, tail_scores);

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = s_begin + r;
    const int64_t visible = attention_visible_len(p, s);
    float* row = scores + r * cols;
    scores_to_probs(attention_score_row(p, s, row, split ? tail_scores + r * cols : nullptr, visible));
    std::fill(row + visible, row + cols, 0.0f);
  }

  GemmParams value_gemm;
  value_gemm.m = rows;
  value_gemm.n = p.value_dim;
  value_gemm.k = cols;
  value_gemm.a = scores;
  value_gemm.lda = cols;
  value_gemm.b = p.values + b * p.value_batch_stride + h * p.value_head_stride;
  value_gemm.ldb = p.value_pos_stride;
  value_gemm.c = p.out + (b * p.seq + s_begin) * p.out_token_stride + h * p.out_head_stride;
  value_gemm.ldc = p.out_token_stride;
  gemm(value_gemm);
  if (p.round_to_bf16) {
    for (int64_t r = 0; r < rows; ++r) round_to_bf16_inplace(value_gemm.c + r * p.out_token_stride, p.value_dim);
  }
}

int64_t score_buffers_per_row(const AttentionParams& p) { return uses_split_scores(p) ? 2 : 1; }

}  // namespace

void attention_standard(const AttentionParams& p, int64_t query_chunk) {
  require_fp32_operands(p, "attention_standard");
  const int64_t n_chunks = (p.seq + query_chunk - 1) / query_chunk;
  const size_t buffer_size = static_cast<size_t>(query_chunk * p.kv_len);
#pragma omp parallel
  {
    AlignedVector<float> scores(buffer_size);
    AlignedVector<float> tail_scores(uses_split_scores(p) ? buffer_size : 0);
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t h = 0; h < p.n_heads; ++h) {
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
          const int64_t s_begin = chunk * query_chunk;
          const int64_t rows = std::min(query_chunk, p.seq - s_begin);
          attend_chunk(p, b, h, s_begin, rows, scores.data(), tail_scores.data());
        }
      }
    }
  }
}

int64_t attention_standard_workspace_bytes(const AttentionParams& p, int64_t query_chunk, int threads) {
  return static_cast<int64_t>(threads) * score_buffers_per_row(p) * query_chunk * p.kv_len *
         static_cast<int64_t>(sizeof(float));
}

int64_t attention_standard_query_chunk(const AttentionParams& p, int64_t budget_bytes, int threads) {
  const int64_t bytes_per_row =
      static_cast<int64_t>(threads) * score_buffers_per_row(p) * p.kv_len * static_cast<int64_t>(sizeof(float));
  const int64_t rows = bytes_per_row > 0 ? budget_bytes / bytes_per_row : p.seq;
  return std::clamp<int64_t>(rows, 1, std::clamp<int64_t>(p.seq, 1, kStandardMaxQueryChunk));
}

}  // namespace mla
