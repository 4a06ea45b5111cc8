// The standard path on the GPU (SPEC.md, The two paths): for each sequence and chunk of query
// rows, the scores of every head are materialized by a strided-batched cuBLAS GEMM, soft-maxed
// in fp32 by attention_softmax_cuda, and multiplied by the values with a second batched GEMM.
// The twin of kernels/cpu/attention_standard; the chunk bounds the score buffer.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/gemm.h"

namespace mla {

// scores (and tail_scores when the bf16 scores are split) hold
// attention_standard_cuda_workspace_floats(params, query_chunk) / buffers floats each.
void attention_standard_cuda(CublasContext& context, const AttentionParams& params, int64_t query_chunk,
                             float* scores, float* tail_scores);

// Both score buffers together, in floats.
int64_t attention_standard_cuda_workspace_floats(const AttentionParams& params, int64_t query_chunk);
// The largest query chunk whose score buffers fit in budget_bytes (at least 1, at most seq).
int64_t attention_standard_cuda_query_chunk(const AttentionParams& params, int64_t budget_bytes);
// Whether this step needs the second (rope-part) score buffer.
inline bool attention_uses_split_scores(const AttentionParams& params) {
  return params.round_to_bf16 && params.score_split > 0;
}

}  // namespace mla
