#include "kernels/cpu/paged_latent.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"

namespace mla {

namespace {

int64_t fp8_blocks(int64_t latent_dim) { return (latent_dim + kLatentFp8Block - 1) / kLatentFp8Block; }

void store_row(const PagedLatentView& cache, const float* row, uint8_t* out) {
  const int64_t width = cache.row_width();
  switch (cache.dtype) {
    case LatentDType::F32: std::memcpy(out, row, static_cast<size_t>(width) * sizeof(float)); return;
    case LatentDType::BF16:
      for (int64_t i = 0; i < width; ++i) {
        const uint16_t bits = f32_to_bf16_bits(row[i]);
        std::memcpy(out + i * 2, &bits, sizeof(bits));
      }
      return;
    case LatentDType::FP8: quantize_latent_row_fp8(row, cache.latent_dim, cache.rope_dim, out); return;
  }
}

void load_row(const PagedLatentView& cache, const uint8_t* row, float* out) {
  const int64_t width = cache.row_width();
  if (cache.dtype == LatentDType::FP8) {
    dequantize_latent_row_fp8(row, cache.latent_dim, cache.rope_dim, out);
    return;
  }
  for (int64_t i = 0; i < width; ++i) {  // bf16 (fp32 rows are read in place)
    uint16_t bits;
    std::memcpy(&bits, row + i * 2, sizeof(bits));
    out[i] = bf16_bits_to_f32(bits);
  }
}

}  // namespace

int64_t latent_row_bytes(LatentDType dtype, int64_t latent_dim, int64_t rope_dim) {
  switch (dtype) {
    case LatentDType::F32: return (latent_dim + rope_dim) * 4;
    case LatentDType::BF16: return (latent_dim + rope_dim) * 2;
    case LatentDType::FP8: return latent_dim + fp8_blocks(latent_dim) * 4 + rope_dim * 2;
  }
  return 0;
}

// docs/design.md, The latent cache: scale = max|block| / 448 (1 for an all-zero block), code =
// e4m3(value / scale) rounded to nearest even and saturated, both in fp32.
void quantize_latent_row_fp8(const float* row, int64_t latent_dim, int64_t rope_dim, uint8_t* out) {
  const int64_t blocks = fp8_blocks(latent_dim);
  uint8_t* scales = out + latent_dim;
  uint8_t* rope = scales + blocks * 4;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t begin = block * kLatentFp8Block;
    const int64_t end = std::min(latent_dim, begin + kLatentFp8Block);
    float max_abs = 0.0f;
    for (int64_t i = begin; i < end; ++i) max_abs = std::max(max_abs, std::fabs(row[i]));
    const float scale = max_abs > 0.0f ? max_abs / 448.0f : 1.0f;
    for (int64_t i = begin; i < end; ++i) out[i] = f32_to_fp8_e4m3(row[i] / scale);
    std::memcpy(scales + block * 4, &scale, sizeof(scale));
  }
  for (int64_t i = 0; i < rope_dim; ++i) {
    const uint16_t bits = f32_to_bf16_bits(row[latent_dim + i]);
    std::memcpy(rope + i * 2, &bits, sizeof(bits));
  }
}

void dequantize_latent_row_fp8(const uint8_t* row, int64_t latent_dim, int64_t rope_dim, float* out) {
  const std::array<float, 256>& values = fp8_e4m3_values();
  const int64_t blocks = fp8_blocks(latent_dim);
  const uint8_t* scales = row + latent_dim;
  const uint8_t* rope = scales + blocks * 4;
  for (int64_t block = 0; block < blocks; ++block) {
    float scale;
    std::memcpy(&scale, scales + block * 4, sizeof(scale));
    const int64_t end = std::min(latent_dim, (block + 1) * kLatentFp8Block);
    for (int64_t i = block * kLatentFp8Block; i < end; ++i) out[i] = values[row[i]] * scale;
  }
  for (int64_t i = 0; i < rope_dim; ++i) {
    uint16_t bits;
    std::memcpy(&bits, rope + i * 2, sizeof(bits));
    out[latent_dim + i] = bf16_bits_to_f32(bits);
  }
}

void paged_latent_append(const PagedLatentAppendParams& p) {
  const PagedLatentView& cache = p.cache;
  const int64_t row_bytes = cache.row_bytes();
#pragma omp parallel for schedule(static) if (p.tokens * cache.row_width() > 65536)
  for (int64_t token = 0; token < p.tokens; ++token) {
    const int64_t position = p.position[token];
    uint8_t* page = cache.page(p.sequence[token], position / cache.page_size);
    const int64_t row = p.row_index != nullptr ? p.row_index[token] : token;
    store_row(cache, p.rows + row * p.row_stride, page + (position % cache.page_size) * row_bytes);
  }
}

const float* paged_latent_rows(const PagedLatentView& cache, int64_t b, int64_t page_index, int64_t first,
                               int64_t count, float* scratch) {
  if (first < 0 || count < 0 || first + count > cache.page_size) {
    throw std::out_of_range("paged_latent_rows: rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
                            ") of a page of " + std::to_string(cache.page_size));
  }
  const int64_t row_bytes = cache.row_bytes();
  const uint8_t* rows = cache.page(b, page_index) + first * row_bytes;
  if (cache.dtype == LatentDType::F32) return reinterpret_cast<const float*>(rows);
  const int64_t width = cache.row_width();
  for (int64_t r = 0; r < count; ++r) load_row(cache, rows + r * row_bytes, scratch + r * width);
  return scratch;
}

}  // namespace mla
