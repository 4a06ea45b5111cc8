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

}  // namespace mla
