#include "kernels/cpu/gemm.h"

#if MLA_HAVE_CBLAS
#include <cblas.h>
#endif

#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/bf16.h"

namespace mla {

#if MLA_HAVE_CBLAS
namespace {
// Debian's OpenBLAS takes 32-bit sizes; a shape past that is a bug upstream, not user input.
blasint to_blas_int(int64_t value, const char* what) {
  if (value < 0 || value > std::numeric_limits<blasint>::max()) {
    throw std::length_error(std::string("gemm: ") + what + " = " + std::to_string(value) +
                            " does not fit a BLAS integer");
  }
  return static_cast<blasint>(value);
}
}  // namespace
#else
namespace {
// Without a BLAS (the GPU check's build on a machine that has none): plain loops, row-parallel,
// each inner loop over contiguous memory. Correct and portable, far from a BLAS's speed; only the
// CPU oracle of the GPU tests runs on it.
void portable_gemm(const GemmParams& p) {
  const auto a_at = [&p](int64_t row, int64_t col) {
    return p.transpose_a ? p.a[col * p.lda + row] : p.a[row * p.lda + col];
  };
#pragma omp parallel for schedule(static) if (p.m * p.n * p.k > 65536)
  for (int64_t row = 0; row < p.m; ++row) {
    float* c_row = p.c + row * p.ldc;
    if (p.transpose_b) {
      for (int64_t col = 0; col < p.n; ++col) {
        const float* b_row = p.b + col * p.ldb;
        float dot = 0.0f;
        for (int64_t i = 0; i < p.k; ++i) dot += a_at(row, i) * b_row[i];
        c_row[col] = p.alpha * dot + (p.beta == 0.0f ? 0.0f : p.beta * c_row[col]);
      }
    } else {
      for (int64_t col = 0; col < p.n; ++col) c_row[col] = p.beta == 0.0f ? 0.0f : p.beta * c_row[col];
      for (int64_t i = 0; i < p.k; ++i) {
        const float scaled = p.alpha * a_at(row, i);
        const float* b_row = p.b + i * p.ldb;
        for (int64_t col = 0; col < p.n; ++col) c_row[col] += scaled * b_row[col];
      }
    }
  }
}
}  // namespace
#endif

namespace {
// Relaxed: a counter for tests and benchmarks, not a synchronisation point; one add per call costs
// nothing next to the call itself.
std::atomic<int64_t> executed_flop{0};
}  // namespace

int64_t gemm_flop_executed() { return executed_flop.load(std::memory_order_relaxed); }

void record_gemm_flop(int64_t flop) { executed_flop.fetch_add(flop, std::memory_order_relaxed); }

void gemm(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  record_gemm_flop(2 * p.m * p.n * p.k);
  if (p.k == 0) {
    // BLAS leaves c untouched for k == 0 only when beta == 1; make the result explicit.
    for (int64_t row = 0; row < p.m; ++row)
      for (int64_t col = 0; col < p.n; ++col) p.c[row * p.ldc + col] *= p.beta;
    return;
  }
#if MLA_HAVE_CBLAS
  cblas_sgemm(CblasRowMajor, p.transpose_a ? CblasTrans : CblasNoTrans, p.transpose_b ? CblasTrans : CblasNoTrans,
              to_blas_int(p.m, "m"), to_blas_int(p.n, "n"), to_blas_int(p.k, "k"), p.alpha, p.a,
              to_blas_int(p.lda, "lda"), p.b, to_blas_int(p.ldb, "ldb"), p.beta, p.c, to_blas_int(p.ldc, "ldc"));
#else
  portable_gemm(p);
#endif
}

void linear(const LinearParams& p) {
  GemmParams gemm_params;
  gemm_params.transpose_b = true;
  gemm_params.m = p.rows;
  gemm_params.n = p.out_features;
  gemm_params.k = p.in_features;
  gemm_params.a = p.x;
  gemm_params.lda = p.x_stride;
  gemm_params.b = p.weight;
  gemm_params.ldb = p.in_features;
  gemm_params.c = p.y;
  gemm_params.ldc = p.y_stride;
  gemm(gemm_params);
  if (p.round_to_bf16) {
    for (int64_t row = 0; row < p.rows; ++row) round_to_bf16_inplace(p.y + row * p.y_stride, p.out_features);
  }
}

std::string blas_description() {
#if MLA_HAVE_CBLAS
  return std::string("OpenBLAS ") + openblas_get_config();
#else
  return "portable loops (built without a BLAS)";
#endif
}

void set_blas_threads(int threads) {
#if MLA_HAVE_CBLAS
  openblas_set_num_threads(threads);
#else
  (void)threads;
#endif
}

}  // namespace mla
