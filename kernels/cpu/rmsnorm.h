// RMSNorm (SPEC.md step 4): y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32.
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
};

void rmsnorm(const RmsNormParams& params);

}  // namespace mla
