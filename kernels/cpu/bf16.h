// bfloat16 conversions. Activations in bf16 compute mode are kept as fp32 values that are exactly
// representable in bf16, so every GEMM can go through fp32 BLAS with fp32 accumulation; where a
// kernel reads or writes bf16 storage instead, it is uint16_t.
//
// Names: a buffer, pointer or field ending in `_bf16` holds bf16 numbers in bf16 storage (uint16_t
// on the CPU, __nv_bfloat16 on the GPU), such as AttentionParams::q_bf16 or PackedLinearCall::y_bf16.
// `bits` in a name means a bit pattern: the conversion functions below (f32_to_bf16_bits gives the
// bf16 pattern of a float) and the exponent and mantissa fields of fp8 decoding.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mla {

inline float bf16_bits_to_f32(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

// Round to nearest even, as PyTorch's .to(torch.bfloat16); NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding_bias = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

inline float round_to_bf16(float value) { return bf16_bits_to_f32(f32_to_bf16_bits(value)); }

// The same rounding without branches, so that loops over it vectorise: every output of every
// bf16 GEMM and every bf16 score goes through it.
inline float round_to_bf16_branchless(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  const uint32_t quiet_nan = (bits | 0x00400000u) & 0xffff0000u;
  bits = (bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

inline void round_to_bf16_inplace(float* values, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) values[i] = round_to_bf16_branchless(values[i]);
}

// fp16 (IEEE binary16) to fp32, for checkpoints stored as F16.
inline float f16_bits_to_f32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits >> 15) & 1;
  const int exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? NAN : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

}  // namespace mla
