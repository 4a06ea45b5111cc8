#include "kernels/cpu/rmsnorm.h"

#include <cmath>

#include "kernels/cpu/bf16.h"

namespace mla {

void rmsnorm(const RmsNormParams& p) {
#pragma omp parallel for schedule(static) if (p.rows * p.dim > 65536)
  for (int64_t row = 0; row < p.rows; ++row) {
    const float* x = p.x + row * p.x_stride;
    float* y = p.y + row * p.y_stride;
    // The sum of squares in double keeps fp32 mode well inside SPEC.md's 1e-5 for any dim.
    double sum_squares = 0.0;
    for (int64_t i = 0; i < p.dim; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
    const float inv_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(p.dim) + p.eps));
    for (int64_t i = 0; i < p.dim; ++i) {
      if (p.round_to_bf16) {
        y[i] = round_to_bf16(round_to_bf16(x[i] * inv_rms) * p.weight[i]);
      } else {
        y[i] = x[i] * inv_rms * p.weight[i];
      }
    }
  }
}

}  // namespace mla
