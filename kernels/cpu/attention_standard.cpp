#include <algorithm>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax.h"

namespace mla {

namespace {

bool uses_split_scores(const AttentionParams& p) { return p.round_to_bf16 && p.score_split > 0; }

// scores[rows, first .. first + count) = Q[rows, k] K[count, k]^T for one head (row stride
// cols), Q and K starting `offset` values in.
void score_gemm(const AttentionParams& p, const float* query, const float* keys, int64_t offset, int64_t k,
                int64_t rows, int64_t first, int64_t count, int64_t cols, float* scores) {
  GemmParams g;
  g.transpose_b = true;
  g.m = rows;
  g.n = count;
  g.k = k;
  g.a = query + offset;
  g.lda = p.q_token_stride;
  g.b = keys + offset;
  g.ldb = p.key_pos_stride;
  g.c = scores + first;
  g.ldc = cols;
  gemm(g);
}

// Per thread: the chunk's scores and a dequantized run of a paged cache.
struct ChunkWorkspace {
  AlignedVector<float> scores;       // [query_chunk, kv_len]
  AlignedVector<float> tail_scores;  // the same, split bf16 scores only
  AlignedVector<float> run_rows;     // [kKvRunRows, C + dr], quantized paged caches only
};

// One chunk of query rows [s_begin, s_begin + rows) of sequence b, head h.
void attend_chunk(const AttentionParams& p, int64_t b, int64_t h, int64_t s_begin, int64_t rows, ChunkWorkspace& work) {
  const AttentionSequence sequence = attention_sequence(p, b);
  const int64_t cols = attention_visible_len(p, sequence, s_begin + rows - 1);
  const float* query = p.q + (sequence.token_offset + s_begin) * p.q_token_stride + h * p.q_head_stride;
  const bool split = uses_split_scores(p);
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  float* scores = work.scores.data();
  float* tail_scores = work.tail_scores.data();
  for_each_kv_run(p, b, h, cols, kStandardKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float* keys, const float*) {
                    score_gemm(p, query, keys, 0, main_dim, rows, first, count, cols, scores);
                    if (split)
                      score_gemm(p, query, keys, main_dim, p.score_dim - main_dim, rows, first, count, cols,
                                 tail_scores);
                  });

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = s_begin + r;
    const int64_t visible = attention_visible_len(p, sequence, s);
    float* row = scores + r * cols;
    scores_to_probs(attention_score_row(p, s, row, split ? tail_scores + r * cols : nullptr, visible));
    std::fill(row + visible, row + cols, 0.0f);
  }

  float* out = p.out + (sequence.token_offset + s_begin) * p.out_token_stride + h * p.out_head_stride;
  for_each_kv_run(p, b, h, cols, kStandardKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float*, const float* values) {
                    GemmParams value_gemm;
                    value_gemm.m = rows;
                    value_gemm.n = p.value_dim;
                    value_gemm.k = count;
                    value_gemm.a = scores + first;
                    value_gemm.lda = cols;
                    value_gemm.b = values;
                    value_gemm.ldb = p.value_pos_stride;
                    value_gemm.beta = first == 0 ? 0.0f : 1.0f;  // runs after the first add to the output
                    value_gemm.c = out;
                    value_gemm.ldc = p.out_token_stride;
                    gemm(value_gemm);
                  });
  if (p.round_to_bf16) {
    for (int64_t r = 0; r < rows; ++r) round_to_bf16_inplace(out + r * p.out_token_stride, p.value_dim);
  }
}

// The step's chunks as (sequence, first query row, rows): sequences of a ragged step have
// different numbers of query rows.
struct QueryChunk {
  int64_t b = 0, s_begin = 0, rows = 0;
};
std::vector<QueryChunk> step_chunks(const AttentionParams& p, int64_t query_chunk) {
  std::vector<QueryChunk> chunks;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t new_tokens = attention_sequence(p, b).new_tokens;
    for (int64_t s_begin = 0; s_begin < new_tokens; s_begin += query_chunk) {
      chunks.push_back({b, s_begin, std::min(query_chunk, new_tokens - s_begin)});
    }
  }
  return chunks;
}

int64_t score_buffers_per_row(const AttentionParams& p) { return uses_split_scores(p) ? 2 : 1; }

}  // namespace

void attention_standard(const AttentionParams& p, int64_t query_chunk) {
  require_fp32_operands(p, "attention_standard");
  check_ragged_and_paged(p, "attention_standard");
  const std::vector<QueryChunk> chunks = step_chunks(p, query_chunk);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const size_t buffer_size = static_cast<size_t>(query_chunk * p.kv_len);
#pragma omp parallel
  {
    ChunkWorkspace work;
    work.scores.resize(buffer_size);
    work.tail_scores.resize(uses_split_scores(p) ? buffer_size : 0);
    work.run_rows.resize(static_cast<size_t>(kv_run_scratch_floats(p, kStandardKvRunRows)));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t index = 0; index < n_chunks; ++index) {
      for (int64_t h = 0; h < p.n_heads; ++h) {
        const QueryChunk& chunk = chunks[index];
        attend_chunk(p, chunk.b, h, chunk.s_begin, chunk.rows, work);
      }
    }
  }
}

int64_t attention_standard_workspace_bytes(const AttentionParams& p, int64_t query_chunk, int threads) {
  return static_cast<int64_t>(threads) *
         (score_buffers_per_row(p) * query_chunk * p.kv_len + kv_run_scratch_floats(p, kStandardKvRunRows)) *
         static_cast<int64_t>(sizeof(float));
}

int64_t attention_standard_query_chunk(const AttentionParams& p, int64_t budget_bytes, int threads) {
  const int64_t bytes_per_row =
      static_cast<int64_t>(threads) * score_buffers_per_row(p) * p.kv_len * static_cast<int64_t>(sizeof(float));
  const int64_t rows = bytes_per_row > 0 ? budget_bytes / bytes_per_row : p.seq;
  return std::clamp<int64_t>(rows, 1, std::clamp<int64_t>(p.seq, 1, kStandardMaxQueryChunk));
}

}  // namespace mla
