#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

#include "kernels/cpu/bf16.h"

namespace mla {

namespace {
// The rotation count n completes at dimension corr(n) (SPEC.md: corr).
double yarn_correction_dim(double rotations, const RopeFrequencyParams& p) {
  return static_cast<double>(p.rope_dim) *
         std::log(static_cast<double>(p.original_seq_len) / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(p.rope_theta));
}
}  // namespace

std::vector<double> rope_frequencies(const RopeFrequencyParams& p) {
  const int64_t half_dim = p.rope_dim / 2;
  std::vector<double> freqs(static_cast<size_t>(half_dim));
  for (int64_t i = 0; i < half_dim; ++i) {
    freqs[i] = std::pow(p.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(p.rope_dim));
  }
  if (!p.yarn) return freqs;
  const double low = std::max(std::floor(yarn_correction_dim(p.beta_fast, p)), 0.0);
  double high = std::min(std::ceil(yarn_correction_dim(p.beta_slow, p)), static_cast<double>(p.rope_dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half_dim; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    freqs[i] = freqs[i] / p.rope_factor * ramp + freqs[i] * (1.0 - ramp);
  }
  return freqs;
}

RopeTable make_rope_table(const RopeFrequencyParams& params, int64_t positions) {
  if (params.rope_dim <= 0 || params.rope_dim % 2 != 0) {
    throw std::invalid_argument("rope: rope_dim must be positive and even");
  }
  const std::vector<double> freqs = rope_frequencies(params);
  RopeTable table;
  table.positions = positions;
  table.half_dim = params.rope_dim / 2;
  table.cos.resize(static_cast<size_t>(positions * table.half_dim));
  table.sin.resize(table.cos.size());
  for (int64_t pos = 0; pos < positions; ++pos) {
    for (int64_t i = 0; i < table.half_dim; ++i) {
      const double angle = static_cast<double>(pos) * freqs[i];
      table.cos[pos * table.half_dim + i] = static_cast<float>(std::cos(angle));
      table.sin[pos * table.half_dim + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

void rope_apply(const RopeParams& p) {
  const RopeTable& table = *p.table;
  if (p.start_pos < 0 || p.start_pos + p.seq > table.positions) {
    throw std::out_of_range("rope: positions past the table (max_seq_len)");
  }
#pragma omp parallel for collapse(2) schedule(static) if (p.batch * p.seq * p.vecs_per_token > 256)
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t s = 0; s < p.seq; ++s) {
      const float* cos_row = table.cos.data() + (p.start_pos + s) * table.half_dim;
      const float* sin_row = table.sin.data() + (p.start_pos + s) * table.half_dim;
      float* token = p.x + (b * p.seq + s) * p.token_stride;
      for (int64_t v = 0; v < p.vecs_per_token; ++v) {
        float* pairs = token + v * p.vec_stride;
        for (int64_t i = 0; i < table.half_dim; ++i) {
          const float re = pairs[2 * i];
          const float im = pairs[2 * i + 1];
          float rotated_re = re * cos_row[i] - im * sin_row[i];
          float rotated_im = re * sin_row[i] + im * cos_row[i];
          if (p.round_to_bf16) {
            rotated_re = round_to_bf16(rotated_re);
            rotated_im = round_to_bf16(rotated_im);
          }
          pairs[2 * i] = rotated_re;
          pairs[2 * i + 1] = rotated_im;
        }
      }
    }
  }
}

}  // namespace mla
