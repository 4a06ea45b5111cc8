#include <omp.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax.h"

namespace mla {

namespace {

bool uses_split_scores(const AttentionParams& p) { return p.round_to_bf16 && p.score_split > 0; }

// Heads whose query rows share their keys and values (absorb: the latent rows serve every head)
// and whose (token, head) rows lie q_head_stride and out_head_stride apart are attended together:
// a chunk of tokens x heads is one block of rows, so one GEMM computes its scores and one its
// values, and a run of a quantized cache is dequantized once for all of them, not once per head.
bool stacks_heads(const AttentionParams& p) {
  return p.n_heads > 1 && p.key_head_stride == 0 && p.value_head_stride == 0 &&
         p.q_token_stride == p.n_heads * p.q_head_stride && p.out_token_stride == p.n_heads * p.out_head_stride;
}

// A block of rows: tokens [s_begin, s_begin + tokens) of sequence b, heads [head, head + heads);
// row r is token s_begin + r / heads, head head + r % heads. Several heads: every head of several
// tokens, or some heads of one token (rows q_head_stride apart either way).
struct RowBlock {
  int64_t b = 0, s_begin = 0, tokens = 0, head = 0, heads = 1;
  int64_t rows() const { return tokens * heads; }
};

// Rows of a block are `lda` apart in q and out: consecutive heads of a token (several heads), or
// consecutive tokens of one head.
int64_t query_row_stride(const AttentionParams& p, const RowBlock& block) {
  return block.heads > 1 ? p.q_head_stride : p.q_token_stride;
}
int64_t out_row_stride(const AttentionParams& p, const RowBlock& block) {
  return block.heads > 1 ? p.out_head_stride : p.out_token_stride;
}

// scores[rows, first .. first + count) = Q[rows, k] K[count, k]^T (row stride cols), Q and K
// starting `offset` values in.
void score_gemm(const AttentionParams& p, const RowBlock& block, const float* query, const float* keys, int64_t offset,
                int64_t k, int64_t first, int64_t count, int64_t cols, float* scores) {
  GemmParams g;
  g.transpose_b = true;
  g.m = block.rows();
  g.n = count;
  g.k = k;
  g.a = query + offset;
  g.lda = query_row_stride(p, block);
  g.b = keys + offset;
  g.ldb = p.key_pos_stride;
  g.c = scores + first;
  g.ldc = cols;
  gemm(g);
}

// Per thread: the block's scores and a dequantized run of a paged cache.
struct ChunkWorkspace {
  AlignedVector<float> scores;       // [rows of a block, kv_len]
  AlignedVector<float> tail_scores;  // the same, split bf16 scores only
  AlignedVector<float> run_rows;     // [kStandardKvRunRows, C + dr], quantized paged caches only
};

void attend_block(const AttentionParams& p, const RowBlock& block, ChunkWorkspace& work) {
  const AttentionSequence sequence = attention_sequence(p, block.b);
  const int64_t rows = block.rows();
  const int64_t cols = attention_visible_len(p, sequence, block.s_begin + block.tokens - 1);
  const float* query = p.q + (sequence.token_offset + block.s_begin) * p.q_token_stride + block.head * p.q_head_stride;
  const bool split = uses_split_scores(p);
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  float* scores = work.scores.data();
  float* tail_scores = work.tail_scores.data();
  for_each_kv_run(p, block.b, block.head, cols, kStandardKvRunRows, work.run_rows.data(),
                  [&](int64_t first, int64_t count, const float* keys, const float*) {
                    score_gemm(p, block, query, keys, 0, main_dim, first, count, cols, scores);
                    if (split) {
                      score_gemm(p, block, query, keys, main_dim, p.score_dim - main_dim, first, count, cols,
                                 tail_scores);
                    }
                  });

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = block.s_begin + r / block.heads;
    const int64_t visible = attention_visible_len(p, sequence, s);
    float* row = scores + r * cols;
    scores_to_probs(attention_score_row(p, s, row, split ? tail_scores + r * cols : nullptr, visible,
                                        attention_lse(p, sequence, s, block.head + r % block.heads)));
    std::fill(row + visible, row + cols, 0.0f);
  }

  float* out = p.out + (sequence.token_offset + block.s_begin) * p.out_token_stride + block.head * p.out_head_stride;
  const int64_t ldc = out_row_stride(p, block);
  if (cols == 0) {  // keys split over ranks: none of this shard's rows is visible yet
    for (int64_t r = 0; r < rows; ++r) std::fill(out + r * ldc, out + r * ldc + p.value_dim, 0.0f);
    return;
  }
  for_each_kv_run(p, block.b, block.head, cols, kStandardKvRunRows, work.run_rows.data(),
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
                    value_gemm.ldc = ldc;
                    gemm(value_gemm);
                  });
  if (p.round_to_bf16) {
    for (int64_t r = 0; r < rows; ++r) round_to_bf16_inplace(out + r * ldc, p.value_dim);
  }
}

// The step's chunks as (sequence, first token, tokens): sequences of a ragged step have
// different numbers of query rows.
struct QueryChunk {
  int64_t b = 0, s_begin = 0, tokens = 0;
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

// Heads per block: all of them when they stack. Chunks of one token each (decode) may split them
// into groups, as far as the threads need work (a decode of one sequence is one chunk: its heads
// in two groups keep two threads busy); a chunk of several tokens keeps every head, since only
// then are its rows evenly apart.
int64_t heads_per_block(const AttentionParams& p, const std::vector<QueryChunk>& chunks, int threads) {
  if (!stacks_heads(p)) return 1;
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const bool single_tokens =
      std::all_of(chunks.begin(), chunks.end(), [](const QueryChunk& c) { return c.tokens == 1; });
  if (!single_tokens || n_chunks == 0) return p.n_heads;
  const int64_t groups = head_groups_for_threads(n_chunks, threads, p.n_heads);
  return (p.n_heads + groups - 1) / groups;
}

// Rows of one block at most: a query chunk of tokens times the heads stacked in a block.
int64_t block_rows(const AttentionParams& p, int64_t query_chunk, int threads) {
  return query_chunk * heads_per_block(p, step_chunks(p, query_chunk), threads);
}

int64_t score_buffers_per_row(const AttentionParams& p) { return uses_split_scores(p) ? 2 : 1; }

}  // namespace

void attention_standard(const AttentionParams& p, int64_t query_chunk) {
  require_fp32_operands(p, "attention_standard");
  check_ragged_and_paged(p, "attention_standard");
  const std::vector<QueryChunk> chunks = step_chunks(p, query_chunk);
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  const int64_t heads = heads_per_block(p, chunks, omp_get_max_threads());
  const int64_t head_groups = (p.n_heads + heads - 1) / heads;
  const size_t buffer_size = static_cast<size_t>(query_chunk * heads * p.kv_len);
#pragma omp parallel
  {
    ChunkWorkspace work;
    work.scores.resize(buffer_size);
    work.tail_scores.resize(uses_split_scores(p) ? buffer_size : 0);
    work.run_rows.resize(static_cast<size_t>(kv_run_scratch_floats(p, kStandardKvRunRows)));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t index = 0; index < n_chunks; ++index) {
      for (int64_t group = 0; group < head_groups; ++group) {
        const QueryChunk& chunk = chunks[index];
        const int64_t head = group * heads;
        attend_block(p, {chunk.b, chunk.s_begin, chunk.tokens, head, std::min(heads, p.n_heads - head)}, work);
      }
    }
  }
}

int64_t attention_standard_workspace_bytes(const AttentionParams& p, int64_t query_chunk, int threads) {
  return static_cast<int64_t>(threads) *
         (score_buffers_per_row(p) * block_rows(p, query_chunk, threads) * p.kv_len +
          kv_run_scratch_floats(p, kStandardKvRunRows)) *
         static_cast<int64_t>(sizeof(float));
}

int64_t attention_standard_query_chunk(const AttentionParams& p, int64_t budget_bytes, int threads) {
  // Stacked heads multiply the rows of a chunk of tokens; the bound on rows holds for the block.
  const int64_t rows_per_token = stacks_heads(p) ? p.n_heads : 1;
  const int64_t bytes_per_token = static_cast<int64_t>(threads) * score_buffers_per_row(p) * rows_per_token * p.kv_len *
                                  static_cast<int64_t>(sizeof(float));
  const int64_t tokens = bytes_per_token > 0 ? budget_bytes / bytes_per_token : p.seq;
  const int64_t most = std::max<int64_t>(1, kStandardMaxQueryChunk / rows_per_token);
  return std::clamp<int64_t>(tokens, 1, std::clamp<int64_t>(p.seq, 1, most));
}

}  // namespace mla
