// RMSNorm (docs/design.md step 4): y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32.
#pragma once

#include <cstdint>

namespace mla {

struct RmsNormParams {
  const float* x = nullptr;  // [rows, dim] with row stride x_stride
  int64_t x_stride = 0;
  const float* weight = nullptr;  // [dim]
  float* y = nullptr;             // [rows, dim] with row stride y_stride; may alias x
  int64_t y_stride = 0;
  int64_t rows = 0;
  int64_t dim = 0;
  float eps = 1e-6f;
  // DeepSeek's bf16 code (F.rms_norm) normalizes in fp32, rounds to bf16, then multiplies by the
  // bf16 weight and rounds again.
  bool round_to_bf16 = false;
  // round_to_bf16 only, in place of x / y (which may then be null): the rows as bf16 numbers, with
  // the same strides, for a layer whose activations between its GEMMs are bf16. y_bf16 may alias x_bf16.
  const uint16_t* x_bf16 = nullptr;
  uint16_t* y_bf16 = nullptr;
};

void rmsnorm(const RmsNormParams& params);

}  // namespace mla
