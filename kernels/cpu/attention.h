// Attention over the cached positions (docs/design.md steps 5-8), shared by the fast and the standard
// path and by both formulations: the formulation only changes what the pointers hold.
//   naive:  q = [q_nope | q_pe] per head, keys = [k_nope | k_pe] per head, values = v per head.
//   absorb: q = [q_lat | q_pe] per head, keys = values = the latent cache [c_n | k_pe], shared by
//           every head (key_head_stride = value_head_stride = 0), value_dim = C; the caller
//           applies Wv afterwards.
#pragma once

#include <cstdint>

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
  // bf16 mode, per-head keys and values (naive) on the AMX fast path only: the operands as bf16
  // numbers, laid out with the strides above, read (or written) in place of q, keys, values and out
  // (each of which may then be null). The CPU layer's GEMMs produce bf16 numbers and its output
  // GEMM reads them; widening them into fp32 buffers for the kernel to round back was two passes
  // over the step's largest operands. attention_fast_amx_applies says whether a step takes that
  // path; the other kernels refuse these (require_fp32_operands).
  const uint16_t* q_bf16 = nullptr;
  const uint16_t* key_bf16 = nullptr;
  const uint16_t* value_bf16 = nullptr;
  uint16_t* out_bf16 = nullptr;

  int64_t batch = 0;
  int64_t seq = 0;  // S, new tokens this step
  int64_t n_heads = 0;
  int64_t start_pos = 0;  // p: the query s sits at position p + s
  int64_t kv_len = 0;     // e = p + S cached positions
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
};

// Fast path: blocks of up to 4 query rows that read the same keys (one head's positions, or
// every head at one position in absorb) keep their scores in a thread-local tile of 4 x kv_len
// floats (16 KiB at kv_len 256, in L1), then an exact fp32 softmax and the value product, each
// key and value loaded once per block; no score matrix in memory.
void attention_fast(const AttentionParams& params);
int64_t attention_fast_workspace_bytes(const AttentionParams& params, int threads);

// Standard path: for each (sequence, head, chunk of query_chunk query rows) the scores
// [query_chunk, kv_len] are materialized by a GEMM, soft-maxed in fp32, and multiplied by the
// values with a second GEMM. query_chunk bounds the memory.
void attention_standard(const AttentionParams& params, int64_t query_chunk);
int64_t attention_standard_workspace_bytes(const AttentionParams& params, int64_t query_chunk, int threads);
// The query chunk: at most kStandardMaxQueryChunk rows, and no more than fit the score buffers of
// all threads in budget_bytes (at least 1).
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

// Positions the query row s may attend to: [0, visible_len). Causal: t <= p + s.
inline int64_t attention_visible_len(const AttentionParams& params, int64_t s) {
  if (params.mask != nullptr) return params.kv_len;
  const int64_t last_visible = params.start_pos + s + 1;
  return last_visible < params.kv_len ? last_visible : params.kv_len;
}

// Query row s's scores over its first `len` positions, to be finished and soft-maxed; tail: the
// rope part's dot products of split bf16 scores, else nullptr.
inline ScoreRow attention_score_row(const AttentionParams& params, int64_t s, float* scores, const float* tail,
                                    int64_t len) {
  ScoreRow row;
  row.scores = scores;
  row.tail = tail;
  row.mask = params.mask != nullptr ? params.mask + s * params.mask_stride : nullptr;
  row.len = len;
  row.scale = params.scale;
  row.round_to_bf16 = params.round_to_bf16;
  return row;
}

}  // namespace mla
