// skinny_linear with bf16 weights and bf16 x (SkinnyLinearParams::x_bf16) on AVX512_BF16:
// vdpbf16ps multiplies 16 pairs of bf16 numbers and adds both products to fp32 lanes, so a step
// of 32 columns is one instruction per (feature, row) with no conversion at all. The products of
// two bf16 numbers are exact in fp32; the sums are fp32, as in the AMX GEMM of longer steps (both
// treat bf16 subnormal inputs as zero). Compiled with AVX-512 + AVX512_BF16 flags, run only when
// cpu_isa() reports them.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {
namespace {

constexpr int kFeatureBlock = 4;
constexpr int kRowBlock = 4;
constexpr int64_t kPairColumns = 32;  // bf16 numbers per 512-bit vector

__m512bh load_bf16(const uint16_t* p, __mmask32 mask) {
  return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, p));
}

// 4 output features x 4 rows in 16 accumulators, as the other skinny bodies block them: each
// weight vector is loaded once and used for every row.
template <int kFeatures, int kRows>
void dot_block(const SkinnyLinearParams& p, int64_t feature_begin, int64_t row_begin) {
  const int64_t in = p.in_features;
  const auto* weight = static_cast<const uint16_t*>(p.weight);
  const uint16_t* w_rows[kFeatures];
  const uint16_t* x_rows[kRows];
  for (int f = 0; f < kFeatures; ++f) w_rows[f] = weight + (feature_begin + f) * in;
  for (int r = 0; r < kRows; ++r) x_rows[r] = p.x_bf16 + (row_begin + r) * in;
  __m512 acc[kFeatures][kRows];
  for (int f = 0; f < kFeatures; ++f) {
    for (int r = 0; r < kRows; ++r) acc[f][r] = _mm512_setzero_ps();
  }
  const auto step = [&](int64_t col, __mmask32 mask) {
    __m512bh w[kFeatures];
    for (int f = 0; f < kFeatures; ++f) w[f] = load_bf16(w_rows[f] + col, mask);
    for (int r = 0; r < kRows; ++r) {
      const __m512bh xv = load_bf16(x_rows[r] + col, mask);
      for (int f = 0; f < kFeatures; ++f) acc[f][r] = _mm512_dpbf16_ps(acc[f][r], w[f], xv);
    }
  };
  int64_t col = 0;
  for (; col + kPairColumns <= in; col += kPairColumns) step(col, ~__mmask32{0});
  // The last in % 32 columns: masked loads read zeros past the row's end.
  if (col < in) step(col, static_cast<__mmask32>((uint64_t{1} << (in - col)) - 1));
  for (int f = 0; f < kFeatures; ++f) {
    for (int r = 0; r < kRows; ++r)
      p.y[(row_begin + r) * p.y_stride + feature_begin + f] = _mm512_reduce_add_ps(acc[f][r]);
  }
}

template <int kFeatures>
void dot_features(const SkinnyLinearParams& p, int64_t feature_begin) {
  int64_t row = 0;
  for (; row + kRowBlock <= p.rows; row += kRowBlock) dot_block<kFeatures, kRowBlock>(p, feature_begin, row);
  switch (p.rows - row) {
    case 3: dot_block<kFeatures, 3>(p, feature_begin, row); break;
    case 2: dot_block<kFeatures, 2>(p, feature_begin, row); break;
    case 1: dot_block<kFeatures, 1>(p, feature_begin, row); break;
    default: break;
  }
}

}  // namespace

void skinny_linear_avx512_bf16(const SkinnyLinearParams& p) {
  const int64_t groups = (p.out_features + kFeatureBlock - 1) / kFeatureBlock;
#pragma omp parallel for schedule(static) if (p.out_features * p.in_features > 65536)
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t feature_begin = group * kFeatureBlock;
    switch (p.out_features - feature_begin < kFeatureBlock ? p.out_features - feature_begin : kFeatureBlock) {
      case 4: dot_features<4>(p, feature_begin); break;
      case 3: dot_features<3>(p, feature_begin); break;
      case 2: dot_features<2>(p, feature_begin); break;
      default: dot_features<1>(p, feature_begin); break;
    }
  }
}

}  // namespace mla
