// Attention over the cached positions (docs/design.md steps 5-8), shared by the fast and the standard
// path and by both formulations: the formulation only changes what the pointers hold.
//   naive:  q = [q_nope | q_pe] per head, keys = [k_nope | k_pe] per head, values = v per head.
//   absorb: q = [q_lat | q_pe] per head, keys = values = the latent cache [c_n | k_pe], shared by
//           every head (key_head_stride = value_head_stride = 0), value_dim = C; the caller
//           applies Wv afterwards.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/paged_latent.h"
#include "kernels/cpu/softmax.h"

namespace mla {

struct AttentionParams {
  // Token (b, s), head h: q + (b * seq + s) * q_token_stride + h * q_head_stride, score_dim values.
  const float* q = nullptr;
  int64_t q_token_stride = 0;
  int64_t q_head_stride = 0;
  // Cached position t of sequence b, head h: keys + b * key_batch_stride + t * key_pos_stride +
  // h * key_head_stride.
  const float* keys = nullptr;
  int64_t key_batch_stride = 0;
  int64_t key_pos_stride = 0;
  int64_t key_head_stride = 0;
  const float* values = nullptr;  // laid out like keys, value_dim values each
  int64_t value_batch_stride = 0;
  int64_t value_pos_stride = 0;
  int64_t value_head_stride = 0;
  float* out = nullptr;  // token (b, s), head h: out + (b * seq + s) * out_token_stride + h * out_head_stride
  int64_t out_token_stride = 0;
  int64_t out_head_stride = 0;
  // bf16 mode, on the CPU's AMX fast path (per-head keys and values: naive) and the GPU's flash
  // kernels (per-head or shared): the operands as bf16 numbers, laid out with the strides above,
  // read (or written) in place of q, keys, values and out (each of which may then be null). The
  // layers' GEMMs produce bf16 numbers; widening them into fp32 buffers for the kernel to round
  // back was two passes over the step's largest operands (and twice their memory).
  // attention_fast_amx_applies and attention_flash_applies say whether a step takes those
  // kernels; the others refuse these (require_fp32_operands).
  const uint16_t* q_bf16 = nullptr;
  const uint16_t* key_bf16 = nullptr;
  const uint16_t* value_bf16 = nullptr;
  uint16_t* out_bf16 = nullptr;
  // bf16 keys in two places (the GPU's flash kernel only, kernels/cuda/attention_flash): dimensions
  // [key_tail_from, score_dim) of each key read from key_tail_bf16 at these strides instead of
  // key_bf16. The naive formulation's keys are [k_nope | k_pe]: k_nope is each head's slice of the
  // expansion's output, k_pe the cache row's rope part shared by every head (head stride 0), and
  // the kernel reads both where they are rather than from a copy joined per head.
  const uint16_t* key_tail_bf16 = nullptr;
  int64_t key_tail_from = 0;
  int64_t key_tail_batch_stride = 0;
  int64_t key_tail_pos_stride = 0;
  int64_t key_tail_head_stride = 0;

  int64_t batch = 0;
  int64_t seq = 0;  // S, new tokens this step (ragged: the most of any sequence)
  int64_t n_heads = 0;
  int64_t start_pos = 0;  // p: the query s sits at position p + s
  int64_t kv_len = 0;     // e = p + S cached positions (ragged: the most of any sequence)
  // Ragged steps (docs/design.md, Serving-shaped steps); null: the uniform batch above. Sequence
  // b's queries are the packed rows token_offset[b] .. token_offset[b] + new_tokens[b] - 1 of q and
  // out, at positions seq_start_pos[b] + s; it attends to its first seq_start_pos[b] + new_tokens[b]
  // positions. A sequence with no new tokens is skipped. No explicit mask with these.
  const int64_t* seq_start_pos = nullptr;
  const int64_t* seq_new_tokens = nullptr;
  const int64_t* seq_token_offset = nullptr;
  // Keys and values shared by every head (absorb) read through the latent cache's block tables
  // (row b of the table is sequence b) instead of keys/values; key_pos_stride = value_pos_stride
  // = C + dr then describe the fp32 rows paged_latent_rows returns. (The GPU's flash kernel reads
  // bf16 pages in place.)
  const PagedLatentView* latent_pages = nullptr;
  int64_t score_dim = 0;
  // bf16 only: DeepSeek's absorb code computes the latent part [0, score_split) and the rope part
  // as two einsums, each rounded to bf16, then adds them. 0: one dot product (naive).
  int64_t score_split = 0;
  int64_t value_dim = 0;
  float scale = 1.0f;
  // Additive mask [seq, kv_len] (row stride mask_stride), replacing the causal rule; nullptr:
  // causal, the query at position p + s sees t <= p + s.
  const float* mask = nullptr;
  int64_t mask_stride = 0;
  bool round_to_bf16 = false;  // bf16 activations: scores, probabilities and outputs rounded
  // Context parallelism (docs/design.md, The latent cache split across ranks): the keys are shard
  // kv_shard of kv_shards of every sequence's positions, position t on shard t % kv_shards at row
  // t / kv_shards, so kv_len and the visible lengths count this shard's rows; queries keep their
  // global positions. 1: every position is here. No explicit mask with shards.
  int64_t kv_shards = 1;
  int64_t kv_shard = 0;
  // Where given, each query row's log-sum-exp of its scores over the positions it sees:
  // lse[(token row) * n_heads + h], -inf for a row that sees none here (its output is then 0).
  float* lse = nullptr;
};

// Steps whose sequences bring at most this many new tokens each are decode-shaped (one token, or a
// few for speculative decoding): under fast_path_max_len auto the planner gives their absorb
// attention to the fused kernels at any length, and on the GPU they take the split-KV decode kernel.
inline constexpr int64_t kDecodeMaxNewTokens = 4;

// Fast path: blocks of up to 4 query rows that read the same keys (one head's positions, or
// every head at one position in absorb) keep their scores in a thread-local tile of 4 x kv_len
// floats (16 KiB at kv_len 256, in L1), then an exact fp32 softmax and the value product, each
// key and value loaded once per block; no score matrix in memory.
void attention_fast(const AttentionParams& params);
int64_t attention_fast_workspace_bytes(const AttentionParams& params, int threads);

// Standard path: for each (sequence, head, chunk of query_chunk query rows) the scores
// [query_chunk, kv_len] are materialized by a GEMM, soft-maxed in fp32, and multiplied by the
// values with a second GEMM. query_chunk bounds the memory. Heads that share their keys (absorb)
// are stacked: a chunk's rows are then its tokens times the heads, one GEMM for all of them (and
// one dequantization of a paged cache's runs instead of one per head).
void attention_standard(const AttentionParams& params, int64_t query_chunk);
int64_t attention_standard_workspace_bytes(const AttentionParams& params, int64_t query_chunk, int threads);
// The query chunk, in tokens: at most kStandardMaxQueryChunk rows (tokens times stacked heads), and
// no more than fit the score buffers of all threads in budget_bytes (at least 1 token).
int64_t attention_standard_query_chunk(const AttentionParams& params, int64_t budget_bytes, int threads);
// Longer chunks only add work under a causal mask (a chunk's scores reach as far as its last row
// sees) and push its scores out of L2: at kv 512 (4 x 16 heads, 2 threads) the attention took
// 36 ms in chunks of 64 or 128 rows against 44 ms in one chunk of 512.
inline constexpr int64_t kStandardMaxQueryChunk = 128;

}  // namespace mla

namespace mla {

// Throws std::invalid_argument, naming `kernel`, when p carries any of the bf16 operands (q_bf16,
// key_bf16, value_bf16, out_bf16): only the AMX fast path reads them, and a kernel reading the fp32
// pointers instead would read nothing (or stale values), or leave the output unwritten.
void require_fp32_operands(const AttentionParams& params, const char* kernel);

// One sequence of a step: its queries' first packed row, their count and first position, and the
// positions it attends to.
struct AttentionSequence {
  int64_t token_offset = 0;
  int64_t new_tokens = 0;
  int64_t start_pos = 0;
  int64_t kv_len = 0;
};

// Of positions [0, positions), how many shard `shard` of `shards` holds (t % shards == shard).
inline int64_t shard_rows(int64_t positions, int64_t shards, int64_t shard) {
  return positions > shard ? (positions - shard + shards - 1) / shards : 0;
}

inline AttentionSequence attention_sequence(const AttentionParams& params, int64_t b) {
  if (params.seq_start_pos == nullptr) {
    const int64_t kv_len = params.kv_shards > 1
                               ? shard_rows(params.start_pos + params.seq, params.kv_shards, params.kv_shard)
                               : params.kv_len;
    return {b * params.seq, params.seq, params.start_pos, kv_len};
  }
  const int64_t start_pos = params.seq_start_pos[b];
  const int64_t new_tokens = params.seq_new_tokens[b];
  return {params.seq_token_offset[b], new_tokens, start_pos,
          shard_rows(start_pos + new_tokens, params.kv_shards, params.kv_shard)};
}

// Rows of the keys the query row s of `sequence` may attend to: [0, visible_len). Causal: t <= p + s
// (with shards: this shard's rows of those positions).
inline int64_t attention_visible_len(const AttentionParams& params, const AttentionSequence& sequence, int64_t s) {
  if (params.mask != nullptr) return sequence.kv_len;
  const int64_t last_visible = shard_rows(sequence.start_pos + s + 1, params.kv_shards, params.kv_shard);
  return last_visible < sequence.kv_len ? last_visible : sequence.kv_len;
}

// Where query row s of `sequence`, head h, keeps its log-sum-exp (nullptr: not asked for).
inline float* attention_lse(const AttentionParams& params, const AttentionSequence& sequence, int64_t s, int64_t h) {
  return params.lse != nullptr ? params.lse + (sequence.token_offset + s) * params.n_heads + h : nullptr;
}

// The same for a uniform batch.
inline int64_t attention_visible_len(const AttentionParams& params, int64_t s) {
  return attention_visible_len(params, attention_sequence(params, 0), s);
}

// Throws std::invalid_argument, naming `kernel`, when a ragged step carries an explicit mask or a
// paged cache is given for per-head keys (only the shared latent rows are paged).
void check_ragged_and_paged(const AttentionParams& params, const char* kernel);

// Most positions read at once from a paged cache whose rows are dequantized (bf16, fp8) into a
// thread's scratch of max_run_rows * (C + dr) floats: the fused kernel's runs stay in L2; the
// standard path's are longer, so that its GEMMs stay large.
inline constexpr int64_t kFastKvRunRows = 64;
inline constexpr int64_t kStandardKvRunRows = 512;

// Positions [0, cols) of sequence b's keys and values (head h), in runs contiguous in memory:
// visit(first, count, keys, values), the pointers at position `first`. Unpaged: one run; fp32
// pages: one run per page; dequantized pages: runs of at most max_run_rows.
template <typename Visit>
void for_each_kv_run(const AttentionParams& params, int64_t b, int64_t h, int64_t cols, int64_t max_run_rows,
                     float* scratch, Visit&& visit) {
  if (params.latent_pages == nullptr) {
    visit(int64_t{0}, cols, params.keys + b * params.key_batch_stride + h * params.key_head_stride,
          params.values + b * params.value_batch_stride + h * params.value_head_stride);
    return;
  }
  const PagedLatentView& cache = *params.latent_pages;
  for (int64_t first = 0; first < cols;) {
    const int64_t page_index = first / cache.page_size;
    const int64_t row = first % cache.page_size;
    const int64_t run_rows = cache.dtype == LatentDType::F32 ? cache.page_size : max_run_rows;
    const int64_t count = std::min({cols - first, cache.page_size - row, run_rows});
    const float* rows = paged_latent_rows(cache, b, page_index, row, count, scratch);
    visit(first, count, rows, rows);
    first += count;
  }
}

// Into how many groups to split `parts` (blocks of heads) so that `units` work items times the
// groups keep `threads` threads busy twice over: 1 when the units alone do, at most `parts`.
inline int64_t head_groups_for_threads(int64_t units, int threads, int64_t parts) {
  return std::clamp<int64_t>((2 * threads + units - 1) / std::max<int64_t>(units, 1), 1, parts);
}

// Floats of one thread's run scratch (0 when nothing is dequantized).
inline int64_t kv_run_scratch_floats(const AttentionParams& params, int64_t max_run_rows) {
  const PagedLatentView* cache = params.latent_pages;
  return cache == nullptr || cache->dtype == LatentDType::F32 ? 0 : max_run_rows * cache->row_width();
}

// Query row s's scores over its first `len` positions, to be finished and soft-maxed; tail: the
// rope part's dot products of split bf16 scores, else nullptr.
inline ScoreRow attention_score_row(const AttentionParams& params, int64_t s, float* scores, const float* tail,
                                    int64_t len, float* lse = nullptr) {
  ScoreRow row;
  row.lse = lse;
  row.scores = scores;
  row.tail = tail;
  row.mask = params.mask != nullptr ? params.mask + s * params.mask_stride : nullptr;
  row.len = len;
  row.scale = params.scale;
  row.round_to_bf16 = params.round_to_bf16;
  return row;
}

}  // namespace mla
