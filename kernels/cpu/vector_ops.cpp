#include "kernels/cpu/vector_ops.h"

#include <cstring>

#include "kernels/cpu/bf16.h"

namespace mla {

MLA_VECTOR_CLONES float dot_f32(const float* x, const float* y, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

MLA_VECTOR_CLONES void axpy_f32(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

MLA_VECTOR_CLONES void dot4_f32(const float* x, const float* const y[4], int64_t n, float out[4]) {
  const float* y0 = y[0];
  const float* y1 = y[1];
  const float* y2 = y[2];
  const float* y3 = y[3];
  float sum0 = 0.0f, sum1 = 0.0f, sum2 = 0.0f, sum3 = 0.0f;
#pragma omp simd reduction(+ : sum0, sum1, sum2, sum3)
  for (int64_t i = 0; i < n; ++i) {
    sum0 += x[i] * y0[i];
    sum1 += x[i] * y1[i];
    sum2 += x[i] * y2[i];
    sum3 += x[i] * y3[i];
  }
  out[0] = sum0;
  out[1] = sum1;
  out[2] = sum2;
  out[3] = sum3;
}

MLA_VECTOR_CLONES void axpy4_f32(const float a[4], const float* const x[4], float* y, int64_t n) {
  const float* x0 = x[0];
  const float* x1 = x[1];
  const float* x2 = x[2];
  const float* x3 = x[3];
  const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
}

MLA_VECTOR_CLONES void dot_4x4_f32(const float* const x[4], const float* const y[4], int64_t n, float out[16]) {
  const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
  const float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
  float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f, s10 = 0.0f, s11 = 0.0f, s12 = 0.0f, s13 = 0.0f;
  float s20 = 0.0f, s21 = 0.0f, s22 = 0.0f, s23 = 0.0f, s30 = 0.0f, s31 = 0.0f, s32 = 0.0f, s33 = 0.0f;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
  for (int64_t i = 0; i < n; ++i) {
    const float a0 = x0[i], a1 = x1[i], a2 = x2[i], a3 = x3[i];
    const float b0 = y0[i], b1 = y1[i], b2 = y2[i], b3 = y3[i];
    s00 += a0 * b0;
    s01 += a0 * b1;
    s02 += a0 * b2;
    s03 += a0 * b3;
    s10 += a1 * b0;
    s11 += a1 * b1;
    s12 += a1 * b2;
    s13 += a1 * b3;
    s20 += a2 * b0;
    s21 += a2 * b1;
    s22 += a2 * b2;
    s23 += a2 * b3;
    s30 += a3 * b0;
    s31 += a3 * b1;
    s32 += a3 * b2;
    s33 += a3 * b3;
  }
  const float sums[16] = {s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33};
  for (int k = 0; k < 16; ++k) out[k] = sums[k];
}

MLA_VECTOR_CLONES void axpy_4x4_f32(const float a[16], const float* const x[4], float* const y[4], int64_t n) {
  const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
  float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v0 = x0[i], v1 = x1[i], v2 = x2[i], v3 = x3[i];
    y0[i] += a[0] * v0 + a[1] * v1 + a[2] * v2 + a[3] * v3;
    y1[i] += a[4] * v0 + a[5] * v1 + a[6] * v2 + a[7] * v3;
    y2[i] += a[8] * v0 + a[9] * v1 + a[10] * v2 + a[11] * v3;
    y3[i] += a[12] * v0 + a[13] * v1 + a[14] * v2 + a[15] * v3;
  }
}

MLA_VECTOR_CLONES void round_to_bf16_copy(const float* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = round_to_bf16_branchless(src[i]);
}

MLA_VECTOR_CLONES void bf16_values_to_bits(const float* src, uint16_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &src[i], sizeof(bits));
    dst[i] = static_cast<uint16_t>(bits >> 16);
  }
}

MLA_VECTOR_CLONES void f32_to_bf16_bits_rne(const float* src, uint16_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float rounded = round_to_bf16_branchless(src[i]);
    uint32_t bits;
    std::memcpy(&bits, &rounded, sizeof(bits));
    dst[i] = static_cast<uint16_t>(bits >> 16);
  }
}

MLA_VECTOR_CLONES void bf16_bits_to_f32_copy(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(bits));
  }
}

}  // namespace mla
