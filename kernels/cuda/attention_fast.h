// The fast path on the GPU (docs/design.md, The fast path and the standard path): one fused
// kernel per step computes the scores, an exact fp32 softmax and the value product with the
// scores kept in shared memory; no score matrix is written to device memory. The twin of kernels/cpu/attention_fast,
// with the same AttentionParams (device pointers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

void attention_fast_cuda(const AttentionParams& params, cudaStream_t stream);

// Shared memory per block for a score vector of score_dim values over kv_len positions.
int64_t attention_fast_shared_bytes(int64_t score_dim, int64_t kv_len);
// The longest kv_len whose scores the current device can keep on chip at this score_dim.
int64_t attention_fast_max_kv_len(int64_t score_dim);

}  // namespace mla
