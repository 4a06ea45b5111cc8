// The latent cache's pages on the device: the twin of kernels/cpu/paged_latent (the same row
// formats, fp32, bf16 and fp8, and the same block tables). Every pointer in the params is device
// memory: the pool, the block table, the rows and the token lists.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/paged_latent.h"

namespace mla {

void paged_latent_append_cuda(const PagedLatentAppendParams& params, cudaStream_t stream);

// Rows of `count` (sequence, position) pairs, read through the block tables as fp32 [count, C + dr]
// (dequantized from bf16 or fp8 rows exactly as paged_latent_rows does). Without the lists, rows
// 0 .. count - 1 of each of `sequences` sequences from `only_sequence` on, [sequences, count, C + dr]:
// the rows a uniform step's batched kernels read, a group of sequences at once.
struct PagedLatentGatherParams {
  PagedLatentView cache;
  const int64_t* sequence = nullptr;  // [count], or nullptr: only_sequence onward
  const int64_t* position = nullptr;  // [count], or nullptr: 0 .. count - 1
  int64_t count = 0;
  float* out = nullptr;  // [count, C + dr], or [sequences, count, C + dr]
  int64_t only_sequence = 0;
  int64_t sequences = 1;  // without the lists only
};

void paged_latent_gather_cuda(const PagedLatentGatherParams& params, cudaStream_t stream);

}  // namespace mla
