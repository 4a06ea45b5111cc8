// The latent cache as pages (docs/design.md, The latent cache): rows [c_n | k_pe] of C + dr values,
// page_size rows per page, one pool of pages, and per sequence a block table naming its pages in
// order. Position t of sequence b is row t % page_size of page block_table[b][t / page_size]; a
// dense cache is one page of max_seq_len rows per sequence.
//
// Rows are stored as fp32, bf16, or fp8: c_n as e4m3 codes in blocks of 128 values with one fp32
// scale per block (the last block shorter when C is not a multiple of 128), k_pe as bf16. An fp8
// row is [C codes][ceil(C / 128) fp32 scales][dr bf16 values]: 656 bytes at C = 512, dr = 64, the
// row DeepSeek's fp8 MLA cache keeps.
#pragma once

#include <cstdint>

namespace mla {

enum class LatentDType { F32, BF16, FP8 };

inline constexpr int64_t kLatentFp8Block = 128;

// Bytes of one cached token.
int64_t latent_row_bytes(LatentDType dtype, int64_t latent_dim, int64_t rope_dim);

struct PagedLatentView {
  uint8_t* pool = nullptr;  // [pages, page_size, row_bytes]
  LatentDType dtype = LatentDType::F32;
  int64_t latent_dim = 0;  // C
  int64_t rope_dim = 0;    // dr
  int64_t page_size = 0;
  // Sequence b's pages: block_table[b * block_table_stride + i] holds positions
  // [i * page_size, (i + 1) * page_size).
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;

  int64_t row_width() const { return latent_dim + rope_dim; }
  int64_t row_bytes() const { return latent_row_bytes(dtype, latent_dim, rope_dim); }
  uint8_t* page(int64_t b, int64_t page_index) const {
    return pool + static_cast<int64_t>(block_table[b * block_table_stride + page_index]) * page_size * row_bytes();
  }
};

// Writes `tokens` fp32 rows [c_n | k_pe] (row stride row_stride) to the cache: token i of
// sequence sequence[i] at position position[i], quantized to the view's dtype (bf16: round to
// nearest even; fp8: docs/design.md's rule). The block table must already hold the pages.
struct PagedLatentAppendParams {
  const float* rows = nullptr;
  int64_t row_stride = 0;
  int64_t tokens = 0;
  const int64_t* sequence = nullptr;  // [tokens]: the row of the block table
  const int64_t* position = nullptr;  // [tokens]
  PagedLatentView cache;
  // [tokens]: the row of `rows` token i stores; nullptr: row i. A rank that keeps only some of a
  // step's positions (context parallelism) appends its own rows in place, without a copy.
  const int64_t* row_index = nullptr;
};

void paged_latent_append(const PagedLatentAppendParams& params);

// Rows [first, first + count) of one page of sequence b as fp32 [count, C + dr], contiguous: a
// pointer into the pool when the cache is fp32, else `scratch` (count * (C + dr) floats) holding
// them dequantized. first + count <= page_size.
const float* paged_latent_rows(const PagedLatentView& cache, int64_t b, int64_t page_index, int64_t first,
                               int64_t count, float* scratch);

// One row's fp8 form and back (exposed for the tests and the CUDA twin's checks).
void quantize_latent_row_fp8(const float* row, int64_t latent_dim, int64_t rope_dim, uint8_t* out);
void dequantize_latent_row_fp8(const uint8_t* row, int64_t latent_dim, int64_t rope_dim, float* out);

}  // namespace mla
