#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <stdexcept>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

namespace {

// One row, in AVX-512 or AVX2 lanes where the CPU has them (MLA_VECTOR_CLONES): the layer
// normalizes every token's q latent and kv latent, 0.5-1 ms of a bf16 prefill step when scalar.
MLA_VECTOR_CLONES void rmsnorm_row(const float* x, const float* weight, float* y, int64_t dim, float eps,
                                   bool round_to_bf16) {
  // The sum of squares in double keeps fp32 mode well inside docs/design.md's 1e-5 for any dim; summed
  // in lanes, in an order docs/design.md's tolerances leave free.
  double sum_squares = 0.0;
#pragma omp simd reduction(+ : sum_squares)
  for (int64_t i = 0; i < dim; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps));
  if (round_to_bf16) {
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i)
      y[i] = round_to_bf16_branchless(round_to_bf16_branchless(x[i] * inv_rms) * weight[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) y[i] = x[i] * inv_rms * weight[i];
  }
}

}  // namespace

void rmsnorm(const RmsNormParams& p) {
  const bool bits_in = p.x_bf16 != nullptr, bits_out = p.y_bf16 != nullptr;
  if ((bits_in || bits_out) && !p.round_to_bf16) {
    throw std::invalid_argument("rmsnorm: bf16 rows (x_bf16/y_bf16) need round_to_bf16");
  }
  if (!bits_in && !bits_out) {
#pragma omp parallel for schedule(static) if (p.rows * p.dim > 65536)
    for (int64_t row = 0; row < p.rows; ++row) {
      rmsnorm_row(p.x + row * p.x_stride, p.weight, p.y + row * p.y_stride, p.dim, p.eps, p.round_to_bf16);
    }
    return;
  }
  // One row at a time through fp32 scratch: the rows are short (a latent), so it stays in L1.
#pragma omp parallel if (p.rows * p.dim > 65536)
  {
    AlignedVector<float> scratch(static_cast<size_t>(p.dim));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < p.rows; ++row) {
      const float* x = p.x + row * p.x_stride;
      if (bits_in) {
        bf16_bits_to_f32_copy(p.x_bf16 + row * p.x_stride, scratch.data(), p.dim);
        x = scratch.data();
      }
      float* y = bits_out ? scratch.data() : p.y + row * p.y_stride;
      rmsnorm_row(x, p.weight, y, p.dim, p.eps, true);
      // The normalized values are bf16 values already: their upper halves are the numbers.
      if (bits_out) bf16_values_to_bits(y, p.y_bf16 + row * p.y_stride, p.dim);
    }
  }
}

}  // namespace mla
