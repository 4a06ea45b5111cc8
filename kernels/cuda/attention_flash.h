// The fast path for bf16 compute as a flash kernel: scores, an exact fp32 softmax and the value
// product fused, the keys and values streamed through shared memory in stages of 64 positions
// (cp.async, double-buffered: the next stage loads while the tensor cores work on this one), the
// softmax kept online (a running maximum and sum per query row, earlier outputs rescaled when the
// maximum grows), so that nothing grows with kv_len but the loop: no score row in shared memory,
// no length limit. Both products on mma.sync m16n8k16 (bf16 operands through ldmatrix, fp32 sums).
//
// It reads bf16 operands in place (AttentionParams' key_bf16, value_bf16, key_tail_bf16, and q as
// fp32 or q_bf16) and writes fp32 outputs holding bf16 numbers. The rounding follows the CPU twin
// (kernels/cpu/attention_fast) where it can: each score rounded to bf16 after its dot product and
// again after the scale, the mask added and rounded, the output rounded. The probabilities differ
// by the online form: exp(score - running max) is rounded to bf16 for the value product and the
// sum divides at the end, where the CPU rounds exp(score - max) / sum; within SPEC.md's bf16
// tolerance (2e-2), like DeepSeek's own bf16 code against fp32.
//
// Served: one dot product per score (naive; absorb's split scores go to attention_fast_mma), a
// uniform batch, unpaged keys, the whole cache on this rank, no log-sum-exps, value_dim <= 128.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

// Whether the kernel takes a step of this shape (the operands' pointers aside) on this device.
bool attention_flash_applies(const AttentionParams& params);

// Shared memory one block needs for this shape.
int64_t attention_flash_shared_bytes(const AttentionParams& params);

// Throws std::invalid_argument when the step is not one attention_flash_applies takes, or its
// bf16 keys or values, its queries or its fp32 output are missing.
void attention_flash_cuda(const AttentionParams& params, cudaStream_t stream);

}  // namespace mla
