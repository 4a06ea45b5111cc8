#include "kernels/cpu/vector_ops.h"

// target_clones builds one body per instruction set and dispatches through an ifunc resolver
// that reads the CPU's flags once, so one binary runs on Zen 4, Xeon and older machines alike.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MLA_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MLA_VECTOR_CLONES
#endif

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

}  // namespace mla
