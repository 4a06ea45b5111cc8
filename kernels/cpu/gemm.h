// Dense GEMMs through OpenBLAS (cblas_sgemm; plain loops in a build without a BLAS). Row-major
// everywhere, fp32 in and out, fp32 accumulation. A call made inside one of our OpenMP regions
// runs single-threaded (OpenBLAS's OpenMP build detects the enclosing region), so batched
// per-head GEMMs parallelise over heads.
#pragma once

#include <cstdint>
#include <string>

namespace mla {

// c[m, n] = alpha * op(a) op(b) + beta * c, op(x) = x or x^T; row-major with leading dimensions.
struct GemmParams {
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  float* c = nullptr;
  int64_t ldc = 0;
};

void gemm(const GemmParams& params);

// A linear layer, y = x W^T (docs/design.md, Weights): x [rows, in_features] with row stride x_stride,
// W [out_features, in_features] row-major, y [rows, out_features] with row stride y_stride.
// round_to_bf16 rounds y as DeepSeek's bf16 F.linear does (fp32 accumulation, bf16 result).
struct LinearParams {
  const float* x = nullptr;
  int64_t x_stride = 0;
  const float* weight = nullptr;
  float* y = nullptr;
  int64_t y_stride = 0;
  int64_t rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool round_to_bf16 = false;
};

void linear(const LinearParams& params);

// 2 m n k summed over every gemm() call of the process so far (benchmarks derive FLOP counts from
// shapes; tests check those derivations against this).
int64_t gemm_flop_executed();
// Adds a GEMM run by another library (oneDNN) to that count.
void record_gemm_flop(int64_t flop);

// Which GEMM this build runs: "OpenBLAS <its build config>" or the portable loops.
std::string blas_description();

// Threads OpenBLAS may use for a call made outside our parallel regions.
void set_blas_threads(int threads);

}  // namespace mla
