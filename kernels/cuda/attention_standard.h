// The standard path on the GPU (docs/design.md, The fast path and the standard path): for each
// sequence and chunk of query rows, the scores of every head are materialized by a strided-batched cuBLAS GEMM,
// soft-maxed in fp32 by attention_softmax_cuda, and multiplied by the values with a second batched GEMM. The twin of
// kernels/cpu/attention_standard; the chunk bounds the score buffer.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/gemm.h"

namespace mla {

// scores (and tail_scores when the bf16 scores are split) hold
// attention_standard_cuda_workspace_floats(params, query_chunk, sequences_per_call) / buffers
// floats each. sequences_per_call: in a decode step over the shared latent cache (one query row
// per head and sequence) that many sequences go through each GEMM and softmax launch together;
// elsewhere, and by default, one.
void attention_standard_cuda(CublasContext& context, const AttentionParams& params, int64_t query_chunk, float* scores,
                             float* tail_scores, int64_t sequences_per_call = 1);

// Both score buffers together, in floats.
int64_t attention_standard_cuda_workspace_floats(const AttentionParams& params, int64_t query_chunk,
                                                 int64_t sequences_per_call = 1);
// How many sequences attention_standard_cuda takes at once with score buffers of buffer_floats
// floats each: more than one only for a decode step over the shared latent cache.
int64_t attention_standard_cuda_sequences_per_call(const AttentionParams& params, int64_t buffer_floats);
// The largest query chunk whose score buffers fit in budget_bytes (at least 1, at most seq).
int64_t attention_standard_cuda_query_chunk(const AttentionParams& params, int64_t budget_bytes);
// Whether this step needs the second (rope-part) score buffer.
inline bool attention_uses_split_scores(const AttentionParams& params) {
  return params.round_to_bf16 && params.score_split > 0;
}

}  // namespace mla
