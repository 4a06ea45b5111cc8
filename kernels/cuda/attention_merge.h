// Merging attention over disjoint parts of the keys on the device: the twin of
// kernels/cpu/attention_merge (the same AttentionMergeParams, device pointers). The split-KV decode
// kernel's partial outputs go through it, and so will a context-parallel group's.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/attention_merge.h"

namespace mla {

void attention_merge_cuda(const AttentionMergeParams& params, cudaStream_t stream);

}  // namespace mla
