// The fast path for bf16 compute as flash kernels: scores, an exact fp32 softmax and the value
// product fused, the keys streamed through shared memory in stages (cp.async, double-buffered: the
// next stage loads while the tensor cores work on this one), the softmax kept online (a running
// maximum and sum per query row, earlier outputs rescaled when the maximum grows), so that nothing
// grows with kv_len but the loop: no score row in shared memory, no length limit. Both products on
// mma.sync m16n8k16 (bf16 operands through ldmatrix, fp32 sums). Two kernels (the .cu file says
// how each splits its work): narrow, for one dot product per score and up to 128 value columns
// (naive); wide, for absorb's split scores (latent and rope parts summed and rounded apart) and up
// to 512 value columns read from the key rows themselves, heads packed into a block's rows.
//
// They read bf16 operands in place: key_bf16 / value_bf16 (and key_tail_bf16), or a bf16 latent
// cache's pages through latent_pages (absorb); q as fp32 or q_bf16; fp32 outputs holding bf16
// numbers. The rounding follows the CPU twin (kernels/cpu/attention_fast) where it can: each score
// rounded to bf16 after its dot product(s) and again after the scale, the mask added and rounded,
// the output rounded. The probabilities differ by the online form: exp(score - running max) is
// rounded to bf16 for the value product and the sum divides at the end, where the CPU rounds
// exp(score - max) / sum; within SPEC.md's bf16 tolerance (2e-2), like DeepSeek's own bf16 code
// against fp32.
//
// Not served (attention_flash_applies is false): fp32 compute, ragged lists, fp32 or fp8 pages, a
// cache split over ranks, log-sum-exps, bf16 outputs.
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
