#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/vector_ops.h"

namespace mla {

namespace {
// The rotation count n completes at dimension corr(n) (docs/design.md, RoPE and YaRN: corr).
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

namespace {

// One vector's interleaved pairs rotated by one position's angles; out may be in.
void rotate_pairs(const float* in, float* out, const float* cos_row, const float* sin_row, int64_t half_dim,
                  bool round_to_bf16) {
  for (int64_t i = 0; i < half_dim; ++i) {
    const float re = in[2 * i];
    const float im = in[2 * i + 1];
    float rotated_re = re * cos_row[i] - im * sin_row[i];
    float rotated_im = re * sin_row[i] + im * cos_row[i];
    if (round_to_bf16) {
      rotated_re = round_to_bf16_branchless(rotated_re);
      rotated_im = round_to_bf16_branchless(rotated_im);
    }
    out[2 * i] = rotated_re;
    out[2 * i + 1] = rotated_im;
  }
}

}  // namespace

void rope_apply(const RopeParams& p) {
  const RopeTable& table = *p.table;
  if (p.positions == nullptr && (p.start_pos < 0 || p.start_pos + p.seq > table.positions)) {
    throw std::out_of_range("rope: positions past the table (max_seq_len)");
  }
  for (int64_t i = 0; p.positions != nullptr && i < p.batch * p.seq; ++i) {
    if (p.positions[i] < 0 || p.positions[i] >= table.positions) {
      throw std::out_of_range("rope: position " + std::to_string(p.positions[i]) + " past the table (max_seq_len)");
    }
  }
  const bool bits = p.x_bf16 != nullptr;
  if (bits && !p.round_to_bf16) throw std::invalid_argument("rope: bf16 vectors (x_bf16) need round_to_bf16");
  const int64_t rope_dim = 2 * table.half_dim;
#pragma omp parallel if (p.batch * p.seq * p.vecs_per_token > 256)
  {
    std::vector<float> scratch(bits ? static_cast<size_t>(rope_dim) : 0);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t s = 0; s < p.seq; ++s) {
        const int64_t position = p.positions != nullptr ? p.positions[b * p.seq + s] : p.start_pos + s;
        const float* cos_row = table.cos.data() + position * table.half_dim;
        const float* sin_row = table.sin.data() + position * table.half_dim;
        const int64_t token = (b * p.seq + s) * p.token_stride;
        for (int64_t v = 0; v < p.vecs_per_token; ++v) {
          if (!bits) {
            float* pairs = p.x + token + v * p.vec_stride;
            rotate_pairs(pairs, pairs, cos_row, sin_row, table.half_dim, p.round_to_bf16);
            continue;
          }
          uint16_t* pairs = p.x_bf16 + token + v * p.vec_stride;
          bf16_bits_to_f32_copy(pairs, scratch.data(), rope_dim);
          rotate_pairs(scratch.data(), scratch.data(), cos_row, sin_row, table.half_dim, true);
          bf16_values_to_bits(scratch.data(), pairs, rope_dim);
        }
      }
    }
  }
}

}  // namespace mla
