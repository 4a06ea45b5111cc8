// Reading the latent cache's rows on the device, in their stored dtype (kernels/cpu/paged_latent.h):
// where a position's row sits in the pool, and one value of it as fp32, dequantized by the same
// rule as the CPU's paged_latent_rows. Shared by the append/gather kernels and the decode kernel,
// which reads the rows through the block tables in place of a dequantized copy.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cpu/paged_latent.h"

namespace mla::cuda_detail {

struct LatentRowGeometry {
  int64_t row_bytes = 0;
  int64_t fp8_blocks = 0;  // ceil(C / 128): fp32 scales after an fp8 row's codes
};

inline LatentRowGeometry latent_row_geometry(const PagedLatentView& cache) {
  return {cache.row_bytes(), (cache.latent_dim + kLatentFp8Block - 1) / kLatentFp8Block};
}

// Row `position` of block-table row `sequence` (a position of this rank's rows).
__device__ inline uint8_t* latent_row_address(const PagedLatentView& cache, const LatentRowGeometry& shape,
                                              int64_t sequence, int64_t position) {
  const int32_t page = cache.block_table[sequence * cache.block_table_stride + position / cache.page_size];
  return cache.pool + (static_cast<int64_t>(page) * cache.page_size + position % cache.page_size) * shape.row_bytes;
}

__device__ inline float load_bf16_at(const uint8_t* values, int64_t index) {
  __nv_bfloat16 value;
  memcpy(&value, values + index * 2, sizeof(value));
  return __bfloat162float(value);
}

// Value i of a row [c_n | k_pe] (i < C + dr) as fp32: fp8 codes times their block's scale (exact in
// fp32), bf16 widened, fp32 as stored.
__device__ inline float load_latent_value(const PagedLatentView& cache, const LatentRowGeometry& shape,
                                          const uint8_t* row, int64_t i) {
  if (cache.dtype == LatentDType::F32) {
    float value;
    memcpy(&value, row + i * 4, sizeof(value));
    return value;
  }
  if (cache.dtype == LatentDType::BF16) return load_bf16_at(row, i);
  if (i >= cache.latent_dim) return load_bf16_at(row + cache.latent_dim + shape.fp8_blocks * 4, i - cache.latent_dim);
  float scale;
  memcpy(&scale, row + cache.latent_dim + (i / kLatentFp8Block) * 4, sizeof(scale));
  __nv_fp8_e4m3 code;
  code.__x = row[i];
  return static_cast<float>(code) * scale;
}

}  // namespace mla::cuda_detail
