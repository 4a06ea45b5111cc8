// The inner loops of the fused attention: a dot product and y += a * x over fp32 vectors.
// Compiled for AVX-512, AVX2 and baseline x86-64; the loader picks the best the CPU reports.
#pragma once

#include <cstdint>

namespace mla {

float dot_f32(const float* x, const float* y, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);

}  // namespace mla
