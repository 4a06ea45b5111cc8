#include "kernels/cpu/fp8.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>

#include "kernels/cpu/bf16.h"

namespace mla {

const std::array<float, 256>& fp8_e4m3_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) values[code] = fp8_e4m3_to_f32(static_cast<uint8_t>(code));
    return values;
  }();
  return table;
}

uint8_t f32_to_fp8_e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const std::array<float, 256>& table = fp8_e4m3_values();
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float magnitude = std::fabs(value);
  // Codes 0x00..0x7e hold the finite magnitudes in increasing order: the nearest is the first
  // code not below the magnitude or the one before it.
  const auto above = std::lower_bound(table.begin(), table.begin() + 0x7f, magnitude);
  const int upper = static_cast<int>(std::min<std::ptrdiff_t>(above - table.begin(), 0x7e));
  const int lower = upper > 0 ? upper - 1 : 0;
  const float lower_distance = std::fabs(table[lower] - magnitude);
  const float upper_distance = std::fabs(table[upper] - magnitude);
  uint8_t best;
  if (lower_distance != upper_distance) {
    best = static_cast<uint8_t>(lower_distance < upper_distance ? lower : upper);
  } else {
    best = static_cast<uint8_t>((lower & 1) == 0 ? lower : upper);
  }
  return static_cast<uint8_t>(sign | best);
}

void fp8_dequant_blocks(const Fp8DequantParams& params) {
  const std::array<float, 256>& table = fp8_e4m3_values();
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < params.rows; ++row) {
    const uint8_t* codes = params.weight + row * params.cols;
    const float* scale_row = params.scale + (row / kFp8BlockSize) * params.scale_cols;
    float* out_row = params.out + row * params.cols;
    for (int64_t col = 0; col < params.cols; ++col) {
      const float value = table[codes[col]] * scale_row[col / kFp8BlockSize];
      out_row[col] = params.round_to_bf16 ? round_to_bf16(value) : value;
    }
  }
}

}  // namespace mla
