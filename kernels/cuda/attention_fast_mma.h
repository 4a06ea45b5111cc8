// The fast path on the tensor cores, for bf16 compute: the same fused step as attention_fast_cuda
// (scores, exact fp32 softmax, value product, the scores kept in shared memory) with the two
// products on bf16 matrix instructions that accumulate in fp32. In bf16 mode every operand is a
// bf16 number already (queries, keys and values are rounded where the CPU twin rounds them, and
// so are the probabilities before the value product), so the instructions see exactly the CPU
// twin's operands; only the order of the fp32 sums differs. The CPU twins are
// kernels/cpu/attention_fast and its tile version kernels/cpu/attention_fast_amx.
//
// attention_fast_cuda sends a step here when attention_fast_mma_applies says it may; fp32
// compute stays on the CUDA-core kernel, whose products must be fp32 (docs/design.md's 1e-5).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

// bf16 mode, and the block's tiles fit this device's shared memory at this kv_len.
bool attention_fast_mma_applies(const AttentionParams& params);

// Shared memory one block needs for this step (0 when no layout fits the kernel's tiles).
int64_t attention_fast_mma_shared_bytes(const AttentionParams& params);

void attention_fast_mma_cuda(const AttentionParams& params, cudaStream_t stream);

}  // namespace mla
