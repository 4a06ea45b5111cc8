// Which query rows a fast-path block holds, shared by the CUDA-core and the tensor-core kernels.
// Rows that read the same keys go together: in absorb every head reads the one latent cache, so a
// group is all (head, position) pairs of a sequence (row = head * seq + position); in naive keys
// are per head and a group is one head's positions. Grid: x the blocks of a group, y the
// sequence, z the head (naive only).
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mla::cuda_detail {

struct BlockRows {
  bool heads_share_keys;
  int64_t seq;
  int64_t group_rows;  // rows of the group
  int64_t b;           // the sequence
  int64_t head;        // naive: the head; absorb: 0
  int64_t first_row;   // the block's first row in its group

  __device__ BlockRows(const AttentionParams& p, int64_t rows_per_block)
      : heads_share_keys(p.key_head_stride == 0 && p.value_head_stride == 0),
        seq(p.seq),
        group_rows(heads_share_keys ? p.n_heads * p.seq : p.seq),
        b(blockIdx.y),
        head(heads_share_keys ? 0 : blockIdx.z),
        first_row(static_cast<int64_t>(blockIdx.x) * rows_per_block) {}

  __device__ int64_t head_of(int64_t row) const { return heads_share_keys ? row / seq : head; }
  __device__ int64_t position_of(int64_t row) const { return heads_share_keys ? row % seq : row; }
};

}  // namespace mla::cuda_detail
