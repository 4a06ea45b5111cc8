#include "kernels/cuda/attention_standard.h"

#include <algorithm>

#include "kernels/cuda/softmax.h"
#include "kernels/cuda/strided_copy.h"

namespace mla {

namespace {

// scores[h][rows, cols] = Q_h[rows, k] K_h[cols, k]^T for every head, Q and K from `offset` on.
void score_gemm(CublasContext& context, const AttentionParams& p, int64_t b, int64_t s_begin, int64_t rows,
                int64_t cols, int64_t offset, int64_t k, float* scores) {
  GemmCudaParams g;
  g.transpose_b = true;
  g.m = rows;
  g.n = cols;
  g.k = k;
  g.a = p.q + (b * p.seq + s_begin) * p.q_token_stride + offset;
  g.lda = p.q_token_stride;
  g.stride_a = p.q_head_stride;
  g.b = p.keys + b * p.key_batch_stride + offset;
  g.ldb = p.key_pos_stride;
  g.stride_b = p.key_head_stride;  // 0 in absorb: every head reads the one latent cache
  g.c = scores;
  g.ldc = cols;
  g.stride_c = rows * cols;
  g.batch = p.n_heads;
  g.bf16_values = p.round_to_bf16;  // bf16 queries and keys: exact on the TF32 tensor cores
  gemm_cuda(context, g);
}

// bf16 mode: the outputs of `rows` tokens from `out` on, every head, rounded to bf16 in place.
void round_outputs(const AttentionParams& p, float* out, int64_t rows, cudaStream_t stream) {
  if (!p.round_to_bf16) return;
  StridedCopyParams round;
  round.src = round.dst = out;
  round.src_outer_stride = round.dst_outer_stride = p.out_token_stride;
  round.src_inner_stride = round.dst_inner_stride = p.out_head_stride;
  round.outer = rows;
  round.inner = p.n_heads;
  round.width = p.value_dim;
  round.round_to_bf16 = true;
  strided_copy_cuda(round, stream);
}

bool grouped_decode(const AttentionParams& p) {
  return p.seq == 1 && p.key_head_stride == 0 && p.value_head_stride == 0;
}

// A decode step over the shared latent cache for sequences b0 .. b0 + n - 1: each sequence's
// rows are its heads, so the sequences are the batch of every GEMM (a launch per sequence cost
// more than its work: about 1.3 ms of launches per step at batch 32 on an H100).
void attention_decode_grouped(CublasContext& context, const AttentionParams& p, int64_t b0, int64_t n, float* scores,
                              float* tail_scores) {
  const bool split = tail_scores != nullptr;
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  const int64_t cols = attention_visible_len(p, 0);
  for (const bool tail : {false, true}) {
    if (tail && !split) continue;
    const int64_t offset = tail ? main_dim : 0;
    GemmCudaParams g;  // scores[b][h][t] = q[b][h] . cache[b][t]
    g.transpose_b = true;
    g.m = p.n_heads;
    g.n = cols;
    g.k = tail ? p.score_dim - main_dim : main_dim;
    g.a = p.q + b0 * p.q_token_stride + offset;
    g.lda = p.q_head_stride;
    g.stride_a = p.q_token_stride;
    g.b = p.keys + b0 * p.key_batch_stride + offset;
    g.ldb = p.key_pos_stride;
    g.stride_b = p.key_batch_stride;
    g.c = tail ? tail_scores : scores;
    g.ldc = cols;
    g.stride_c = p.n_heads * cols;
    g.batch = n;
    g.bf16_values = p.round_to_bf16;
    gemm_cuda(context, g);
  }
  // One row per (sequence, head), all at position start_pos: the softmax sees n * heads rows.
  AttentionParams rows = p;
  rows.n_heads = n * p.n_heads;
  attention_softmax_cuda(rows, {scores, tail_scores, 1, cols, 0}, context.stream());

  GemmCudaParams value_gemm;
  value_gemm.m = p.n_heads;
  value_gemm.n = p.value_dim;
  value_gemm.k = cols;
  value_gemm.a = scores;
  value_gemm.lda = cols;
  value_gemm.stride_a = p.n_heads * cols;
  value_gemm.b = p.values + b0 * p.value_batch_stride;
  value_gemm.ldb = p.value_pos_stride;
  value_gemm.stride_b = p.value_batch_stride;
  value_gemm.c = p.out + b0 * p.out_token_stride;
  value_gemm.ldc = p.out_head_stride;
  value_gemm.stride_c = p.out_token_stride;
  value_gemm.batch = n;
  value_gemm.bf16_values = p.round_to_bf16;
  gemm_cuda(context, value_gemm);
  round_outputs(p, p.out + b0 * p.out_token_stride, n, context.stream());  // one token per sequence
}

}  // namespace

void attention_standard_cuda(CublasContext& context, const AttentionParams& p, int64_t query_chunk, float* scores,
                             float* tail_scores, int64_t sequences_per_call) {
  const bool split = attention_uses_split_scores(p);
  const int64_t main_dim = split ? p.score_split : p.score_dim;
  if (grouped_decode(p) && sequences_per_call > 1) {
    for (int64_t b0 = 0; b0 < p.batch; b0 += sequences_per_call) {
      attention_decode_grouped(context, p, b0, std::min(sequences_per_call, p.batch - b0), scores,
                               split ? tail_scores : nullptr);
    }
    return;
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t s_begin = 0; s_begin < p.seq; s_begin += query_chunk) {
      const int64_t rows = std::min(query_chunk, p.seq - s_begin);
      const int64_t cols = attention_visible_len(p, s_begin + rows - 1);
      score_gemm(context, p, b, s_begin, rows, cols, 0, main_dim, scores);
      if (split) score_gemm(context, p, b, s_begin, rows, cols, main_dim, p.score_dim - main_dim, tail_scores);
      attention_softmax_cuda(p, {scores, split ? tail_scores : nullptr, rows, cols, s_begin}, context.stream());

      GemmCudaParams value_gemm;
      value_gemm.m = rows;
      value_gemm.n = p.value_dim;
      value_gemm.k = cols;
      value_gemm.a = scores;
      value_gemm.lda = cols;
      value_gemm.stride_a = rows * cols;
      value_gemm.b = p.values + b * p.value_batch_stride;
      value_gemm.ldb = p.value_pos_stride;
      value_gemm.stride_b = p.value_head_stride;
      float* out = p.out + (b * p.seq + s_begin) * p.out_token_stride;
      value_gemm.c = out;
      value_gemm.ldc = p.out_token_stride;
      value_gemm.stride_c = p.out_head_stride;
      value_gemm.batch = p.n_heads;
      value_gemm.bf16_values = p.round_to_bf16;  // probabilities rounded to bf16, bf16 values
      gemm_cuda(context, value_gemm);
      round_outputs(p, out, rows, context.stream());
    }
  }
}

int64_t attention_standard_cuda_workspace_floats(const AttentionParams& p, int64_t query_chunk,
                                                 int64_t sequences_per_call) {
  const int64_t sequences =
      grouped_decode(p) ? std::clamp<int64_t>(sequences_per_call, 1, std::max<int64_t>(p.batch, 1)) : 1;
  return (attention_uses_split_scores(p) ? 2 : 1) * sequences * p.n_heads * query_chunk * p.kv_len;
}

int64_t attention_standard_cuda_sequences_per_call(const AttentionParams& p, int64_t buffer_floats) {
  if (!grouped_decode(p) || p.n_heads * p.kv_len == 0) return 1;
  // The softmax launch has a block per (sequence, head) in a grid dimension of at most 65535.
  const int64_t most = std::max<int64_t>(std::min<int64_t>(p.batch, 65535 / std::max<int64_t>(p.n_heads, 1)), 1);
  return std::clamp<int64_t>(buffer_floats / (p.n_heads * p.kv_len), 1, most);
}

int64_t attention_standard_cuda_query_chunk(const AttentionParams& p, int64_t budget_bytes) {
  const int64_t bytes_per_row = attention_standard_cuda_workspace_floats(p, 1) * static_cast<int64_t>(sizeof(float));
  const int64_t rows = bytes_per_row > 0 ? budget_bytes / bytes_per_row : p.seq;
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(p.seq, 1));
}

}  // namespace mla
