// The inner loops of the fused attention: a dot product and y += a * x over fp32 vectors.
// Compiled for AVX-512, AVX2 and baseline x86-64; the loader picks the best the CPU reports.
#pragma once

#include <cstdint>

namespace mla {

float dot_f32(const float* x, const float* y, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
// Four at once, so that the shared operand is loaded once for four keys: out[j] = dot(x, y[j]);
// and y += sum_j a[j] x[j], which reads and writes y once instead of four times.
void dot4_f32(const float* x, const float* const y[4], int64_t n, float out[4]);
void axpy4_f32(const float a[4], const float* const x[4], float* y, int64_t n);

}  // namespace mla
