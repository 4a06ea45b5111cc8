// Copies (and optionally rounds) a grid of short vectors between strided layouts: the glue of the
// layer that places q_pe beside the absorbed queries and builds naive keys [k_nope | k_pe].
#pragma once

#include <cstdint>

namespace mla {

// For every (n < batch, i < outer, j < inner): the `width` floats at src + n * src_batch_stride +
// i * src_outer_stride + j * src_inner_stride go to dst + n * dst_batch_stride +
// i * dst_outer_stride + j * dst_inner_stride. A source stride of 0 repeats one vector (k_pe,
// shared by every head). src may equal dst with the same strides, which rounds in place.
struct StridedCopyParams {
  const float* src = nullptr;
  int64_t src_outer_stride = 0;
  int64_t src_inner_stride = 0;
  float* dst = nullptr;
  int64_t dst_outer_stride = 0;
  int64_t dst_inner_stride = 0;
  int64_t outer = 0;
  int64_t inner = 1;
  int64_t batch = 1;  // e.g. sequences, each at its own place in the cache
  int64_t src_batch_stride = 0;
  int64_t dst_batch_stride = 0;
  int64_t width = 0;
  bool round_to_bf16 = false;
};

void strided_copy(const StridedCopyParams& params);

}  // namespace mla
