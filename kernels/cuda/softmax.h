// The standard path's softmax on the GPU: finishes the raw dot products a GEMM left in a score
// buffer (scale, bf16 rounding, mask) and turns each row into probabilities, in fp32 with the sum
// in double; the twin of kernels/cpu/softmax.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla {

// scores [n_heads][rows][cols] hold the raw dots of query rows s_begin .. s_begin + rows - 1 of
// one sequence against positions 0 .. cols - 1 (tail_scores likewise, the rope part, when the
// bf16 scores are split); positions a row cannot see come out as probability 0.
struct AttentionSoftmaxParams {
  float* scores = nullptr;
  const float* tail_scores = nullptr;  // nullptr unless params.round_to_bf16 && params.score_split > 0
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t s_begin = 0;
};

void attention_softmax_cuda(const AttentionParams& attention, const AttentionSoftmaxParams& params,
                            cudaStream_t stream);

}  // namespace mla
