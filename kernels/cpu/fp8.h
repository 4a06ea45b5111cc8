// fp8 e4m3fn codes (DeepSeek-V3's weight format) and their 128x128 block dequantization.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace mla {

inline constexpr int64_t kFp8BlockSize = 128;

// e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, and the codes
// 0x7f / 0xff are NaN. Largest finite magnitude 448.
inline float fp8_e4m3_to_f32(uint8_t code) {
  const int exponent = (code >> 3) & 0xf;
  const int mantissa = code & 0x7;
  float magnitude;
  if (exponent == 0xf && mantissa == 0x7) {
    magnitude = NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // subnormal: m/8 * 2^-6
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  }
  return (code & 0x80) ? -magnitude : magnitude;
}

// Every code's value (fp8_e4m3_to_f32), looked up instead of decoded.
const std::array<float, 256>& fp8_e4m3_values();

// W[i][j] = q[i][j] * scale[i / 128][j / 128] (docs/design.md, Weights). `weight` is [rows, cols]
// row-major; `scale` is [ceil(rows / 128), scale_cols] with scale_cols >= ceil(cols / 128).
// The slice must start on a block edge, so local block indices equal global ones minus an offset
// the caller already applied when it read the scales.
struct Fp8DequantParams {
  const uint8_t* weight = nullptr;
  const float* scale = nullptr;
  float* out = nullptr;  // [rows, cols] f32
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t scale_cols = 0;
  bool round_to_bf16 = false;  // DeepSeek's bf16 path dequantizes into bf16 weights
};

void fp8_dequant_blocks(const Fp8DequantParams& params);

}  // namespace mla

namespace mla {

// The nearest e4m3fn code (ties to even), saturating at +-448; NaN maps to the NaN code.
uint8_t f32_to_fp8_e4m3(float value);

}  // namespace mla
