#include "kernels/cpu/skinny_linear.h"

#include <stdexcept>
#include <vector>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {

// The reference: one output at a time, weights converted exactly as the vector paths do.
void skinny_linear_portable(const SkinnyLinearParams& p) {
  const int64_t in = p.in_features;
#pragma omp parallel for schedule(static) if (p.out_features * p.in_features > 65536)
  for (int64_t feature = 0; feature < p.out_features; ++feature) {
    for (int64_t row = 0; row < p.rows; ++row) {
      const float* x = p.x + row * p.x_stride;
      float sum = 0.0f;
      for (int64_t col = 0; col < in; ++col) {
        float weight;
        switch (p.codes) {
          case WeightCodes::F32: weight = static_cast<const float*>(p.weight)[feature * in + col]; break;
          case WeightCodes::BF16:
            weight = bf16_bits_to_f32(static_cast<const uint16_t*>(p.weight)[feature * in + col]);
            break;
          default:
            weight = fp8_e4m3_to_f32(static_cast<const uint8_t*>(p.weight)[feature * in + col]) *
                     p.block_scales[(feature / kFp8BlockSize) * p.scale_cols + col / kFp8BlockSize];
            if (p.round_fp8_to_bf16) weight = round_to_bf16(weight);
            break;
        }
        sum += weight * x[col];
      }
      p.y[row * p.y_stride + feature] = sum;
    }
  }
}

bool skinny_linear_bf16_products() { return cpu_isa() >= CpuIsa::Avx512Bf16; }

void skinny_linear(const SkinnyLinearParams& params) {
  if (params.rows == 0 || params.out_features == 0) return;
  const CpuIsa isa = cpu_isa();
  if (params.x_bf16 != nullptr) {
    if (params.codes != WeightCodes::BF16)
      throw std::invalid_argument("skinny_linear: x_bf16 given for a weight not stored in bf16");
    if (isa == CpuIsa::Amx && amx_tiles_permitted()) {
      skinny_linear_amx(params);
      return;
    }
    if (skinny_linear_bf16_products()) {
      skinny_linear_avx512_bf16(params);
      return;
    }
    std::vector<float> widened(static_cast<size_t>(params.rows * params.in_features));
    for (size_t i = 0; i < widened.size(); ++i) widened[i] = bf16_bits_to_f32(params.x_bf16[i]);
    SkinnyLinearParams fp32_x = params;
    fp32_x.x_bf16 = nullptr;
    fp32_x.x = widened.data();
    fp32_x.x_stride = params.in_features;
    skinny_linear(fp32_x);
    return;
  }
  if (isa >= CpuIsa::Avx512) {
    skinny_linear_avx512(params);
  } else if (isa >= CpuIsa::Avx2) {
    skinny_linear_avx2(params);
  } else {
    skinny_linear_portable(params);
  }
}

}  // namespace mla
