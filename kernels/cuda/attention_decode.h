// Decode attention over the latent cache in place, split over the keys (docs/cuda_backend.md,
// Decode on the GPU). The absorb formulation's decode step: every head of a sequence reads the
// same latent rows, so one block takes all of a sequence's query rows (heads x its few new tokens)
// and reads each row of its share of the keys once for all of them, straight from the pages in
// their stored dtype (fp32, bf16, fp8 dequantized in registers by SPEC.md's rule). The keys of a
// sequence are divided among several blocks (split-KV) so that a small batch still fills the GPU;
// each block keeps an exact fp32 online softmax (running max and sum) and writes its output with
// its log-sum-exp, and attention_merge_cuda combines the parts. No length limit from shared memory.
//
// The CPU twin is attention_fast over the same paged cache (kernels/cpu/attention_fast.h): the same
// AttentionParams, the same outputs and log-sum-exp. Rounding differs only where a single pass
// must: in bf16 mode the probabilities are rounded to bf16 relative to the running max, and the
// division by the sum comes after the value product (the softmax is exact; within SPEC.md's bf16
// bound of the twin, which rounds the normalized probabilities).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

// Whether attention_decode_cuda serves `params`: shared latent rows (absorb) read through
// latent_pages, no explicit mask, value_dim <= 1024, a score row that fits shared memory.
bool attention_decode_applies(const AttentionParams& params);

// How the keys are divided: `splits` blocks per (sequence, block of query rows), each taking
// keys_per_split rows of this rank's cache (a multiple of the key tile).
struct AttentionDecodeSplit {
  int64_t splits = 1;
  int64_t keys_per_split = 0;
};

// Enough splits for the grid to hold two blocks on every SM of the current device, each split at
// least two key tiles, at most what the workspace holds: partial_rows rows of value_dim floats
// (and a log-sum-exp each), tokens * n_heads rows per split. One split needs no workspace: the
// block writes the output itself. Splitting also needs the output dense ([tokens, n_heads,
// value_dim]), as the merge writes it.
AttentionDecodeSplit attention_decode_split(const AttentionParams& params, int64_t tokens, int64_t partial_rows);

// The partial rows a layer keeps for the splits: a few blocks' rows per SM of the current device
// (enough for any split attention_decode_split chooses when the grid would not fill the GPU).
int64_t attention_decode_partial_rows();
// Floats of a workspace of `rows` partial rows: the outputs, then the log-sum-exps.
inline int64_t attention_decode_workspace_floats(int64_t rows, int64_t value_dim) { return rows * (value_dim + 1); }

// params: device pointers (q, out, lse, the ragged lists), except latent_pages, a host struct whose
// pool and block_table are device memory. tokens: the step's packed query rows (uniform: batch *
// seq). workspace: attention_decode_workspace_floats(partial_rows, value_dim) floats, or nullptr
// when split.splits is 1.
void attention_decode_cuda(const AttentionParams& params, int64_t tokens, const AttentionDecodeSplit& split,
                           float* workspace, int64_t partial_rows, cudaStream_t stream);

}  // namespace mla
