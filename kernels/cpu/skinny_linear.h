// y = x W^T for a few rows of x (decode: one token per sequence), with W kept in its storage
// precision (fp32, bf16, or fp8 e4m3 codes with 128x128 block scales) and converted to fp32 in
// registers as it streams past: each weight byte is read once per step, which is what bounds a
// decode step. fp32 accumulation; the result equals fp32 arithmetic on the dequantized weight up
// to summation order (an fp8 weight is code * scale in fp32, rounded to bf16 when asked, exactly
// as fp8_dequant_blocks makes it). Vectorised for AVX-512 and AVX2 (cpu_isa()), with a portable path; threads split the
// output features. In bf16 compute (x_bf16) the products of bf16 x and bf16 weights run on AMX
// tiles or AVX512_BF16 dot products, exact products with fp32 sums, as the GEMM of longer steps.
#pragma once

#include <cstdint>

namespace mla {

enum class WeightCodes { F32, BF16, FP8_E4M3 };

// Up to this many rows the kernel beats a GEMM: the weight is streamed once per 4 rows from
// cache, and the step is bound by reading it from memory.
inline constexpr int64_t kSkinnyMaxRows = 16;

struct SkinnyLinearParams {
  const float* x = nullptr;  // [rows, in_features], row stride x_stride
  int64_t x_stride = 0;
  // Instead of x, with bf16 weights (bf16 compute): x as bf16 numbers, dense [rows, in_features].
  // The products then run on AMX tiles or as vdpbf16ps pairs (AVX512_BF16), whichever the CPU
  // has; elsewhere x is widened for the fp32 bodies.
  const uint16_t* x_bf16 = nullptr;
  int64_t rows = 0;
  WeightCodes codes = WeightCodes::F32;
  const void* weight = nullptr;         // [out_features, in_features] row-major: float, uint16_t (bf16 bits) or uint8_t
  const float* block_scales = nullptr;  // fp8: [ceil(out/128), scale_cols], one per 128x128 block
  int64_t scale_cols = 0;
  // fp8: each code * scale rounded to bf16 (round to nearest even) in registers before its product,
  // as weights.fp8_dequant: bf16 dequantizes (the codes stay 1 byte in memory).
  bool round_fp8_to_bf16 = false;
  float* y = nullptr;  // [rows, out_features], row stride y_stride
  int64_t y_stride = 0;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

void skinny_linear(const SkinnyLinearParams& params);

// Whether this CPU multiplies bf16 x by bf16 weights as they are (AMX tiles or AVX512_BF16).
// Elsewhere skinny_linear widens x_bf16 first, so a caller that holds x in fp32 passes that.
bool skinny_linear_bf16_products();

}  // namespace mla
