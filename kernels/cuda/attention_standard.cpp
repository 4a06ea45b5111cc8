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
  gemm_cuda(context, g);
}

}  // namespace

void attention_standard_cuda(CublasContext& context, const AttentionParams& p, int64_t query_chunk, float* scores,
                             float* tail_scores) {
  const bool split = attention_uses_split_scores(p);
  const int64_t main_dim = split ? p.score_split : p.score_dim;
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
      gemm_cuda(context, value_gemm);
      if (p.round_to_bf16) {
        StridedCopyParams round;
        round.src = round.dst = out;
        round.src_outer_stride = round.dst_outer_stride = p.out_token_stride;
        round.src_inner_stride = round.dst_inner_stride = p.out_head_stride;
        round.outer = rows;
        round.inner = p.n_heads;
        round.width = p.value_dim;
        round.round_to_bf16 = true;
        strided_copy_cuda(round, context.stream());
      }
    }
  }
}

int64_t attention_standard_cuda_workspace_floats(const AttentionParams& p, int64_t query_chunk) {
  return (attention_uses_split_scores(p) ? 2 : 1) * p.n_heads * query_chunk * p.kv_len;
}

int64_t attention_standard_cuda_query_chunk(const AttentionParams& p, int64_t budget_bytes) {
  const int64_t bytes_per_row = attention_standard_cuda_workspace_floats(p, 1) * static_cast<int64_t>(sizeof(float));
  const int64_t rows = bytes_per_row > 0 ? budget_bytes / bytes_per_row : p.seq;
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(p.seq, 1));
}

}  // namespace mla
