// The body of skinny_linear, written once over a SIMD policy (Simd::V, kWidth, zero, load, fma,
// reduce, and the weight conversions) and included by each ISA's file inside an anonymous
// namespace, so that no function compiled for AVX-512 can be linked into the AVX2 or portable
// paths.
//
// Register blocking: 4 output features x 4 rows of x accumulate in 16 vectors; each step of
// kWidth columns converts 4 weight vectors and reuses each for 4 rows. A thread owns whole groups
// of 4 output features, so each weight byte is fetched from memory once; further rows of x reread
// the group's weights from cache.

// Only what is defined here is called from the loops: an inline function from a shared header
// would be compiled with this file's ISA flags and could be the copy the linker keeps.
// The including file includes <cstdint>, <cstring> and skinny_linear_isa.h before its namespace.

constexpr int64_t kScaleBlock = 128;  // fp8 block scales cover 128 x 128 weights
constexpr int kFeatureBlock = 4;
constexpr int kRowBlock = 4;

// The fp8 magnitude bits moved into an fp32's exponent and mantissa read as 2^-120 times the
// code's value (subnormal codes included), so one multiply by scale * 2^120 gives code * scale
// rounded once: the same fp32 as fp8_dequant_blocks. Exact for scales below 2^8 (the caller checks).
constexpr float kFp8Rebias = 0x1p120f;

float fp8_rebiased(uint8_t code) {
  const uint32_t bits = (static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(code))) << 20) & 0x87f00000u;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Round to nearest even, as round_to_bf16; no NaN case: code * scale is finite here (the caller
// streams only finite scales below 2^8, and the rebiased codes are finite numbers).
float round_bf16_finite(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

float bf16_value(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

template <class Simd, WeightCodes kCodes, bool kRoundBf16, int kFeatures, int kRows>
void skinny_block(const SkinnyLinearParams& p, int64_t feature_begin, int64_t row_begin) {
  using V = typename Simd::V;
  constexpr int64_t kWidth = Simd::kWidth;
  const int64_t in = p.in_features;
  const int64_t vector_end = in - in % kWidth;
  const float* x_rows[kRows];
  for (int r = 0; r < kRows; ++r) x_rows[r] = p.x + (row_begin + r) * p.x_stride;
  V acc[kFeatures][kRows];
  for (int f = 0; f < kFeatures; ++f) {
    for (int r = 0; r < kRows; ++r) acc[f][r] = Simd::zero();
  }
  for (int64_t block_begin = 0; block_begin < vector_end; block_begin += kScaleBlock) {
    const int64_t block_end = block_begin + kScaleBlock < vector_end ? block_begin + kScaleBlock : vector_end;
    V scale[kFeatures];
    if constexpr (kCodes == WeightCodes::FP8_E4M3) {
      for (int f = 0; f < kFeatures; ++f) {
        const int64_t feature = feature_begin + f;
        scale[f] = Simd::broadcast(p.block_scales[(feature / kScaleBlock) * p.scale_cols + block_begin / kScaleBlock] *
                                   kFp8Rebias);
      }
    }
    for (int64_t col = block_begin; col < block_end; col += kWidth) {
      V w[kFeatures];
      for (int f = 0; f < kFeatures; ++f) {
        const int64_t offset = (feature_begin + f) * in + col;
        if constexpr (kCodes == WeightCodes::F32) {
          w[f] = Simd::load(static_cast<const float*>(p.weight) + offset);
        } else if constexpr (kCodes == WeightCodes::BF16) {
          w[f] = Simd::load_bf16(static_cast<const uint16_t*>(p.weight) + offset);
        } else {
          w[f] = Simd::mul(Simd::load_fp8_rebiased(static_cast<const uint8_t*>(p.weight) + offset), scale[f]);
          if constexpr (kRoundBf16) w[f] = Simd::round_bf16_finite(w[f]);
        }
      }
      for (int r = 0; r < kRows; ++r) {
        const V xv = Simd::load(x_rows[r] + col);
        for (int f = 0; f < kFeatures; ++f) acc[f][r] = Simd::fma(w[f], xv, acc[f][r]);
      }
    }
  }
  for (int f = 0; f < kFeatures; ++f) {
    const int64_t feature = feature_begin + f;
    for (int r = 0; r < kRows; ++r) {
      float sum = Simd::reduce(acc[f][r]);
      for (int64_t col = vector_end; col < in; ++col) {  // the last in % kWidth columns
        float weight;
        if constexpr (kCodes == WeightCodes::F32) {
          weight = static_cast<const float*>(p.weight)[feature * in + col];
        } else if constexpr (kCodes == WeightCodes::BF16) {
          weight = bf16_value(static_cast<const uint16_t*>(p.weight)[feature * in + col]);
        } else {
          weight = fp8_rebiased(static_cast<const uint8_t*>(p.weight)[feature * in + col]) *
                   (p.block_scales[(feature / kScaleBlock) * p.scale_cols + col / kScaleBlock] * kFp8Rebias);
          if constexpr (kRoundBf16) weight = round_bf16_finite(weight);
        }
        sum += weight * x_rows[r][col];
      }
      p.y[(row_begin + r) * p.y_stride + feature] = sum;
    }
  }
}

template <class Simd, WeightCodes kCodes, bool kRoundBf16, int kFeatures>
void skinny_features(const SkinnyLinearParams& p, int64_t feature_begin) {
  int64_t row = 0;
  for (; row + kRowBlock <= p.rows; row += kRowBlock) {
    skinny_block<Simd, kCodes, kRoundBf16, kFeatures, kRowBlock>(p, feature_begin, row);
  }
  switch (p.rows - row) {
    case 3: skinny_block<Simd, kCodes, kRoundBf16, kFeatures, 3>(p, feature_begin, row); break;
    case 2: skinny_block<Simd, kCodes, kRoundBf16, kFeatures, 2>(p, feature_begin, row); break;
    case 1: skinny_block<Simd, kCodes, kRoundBf16, kFeatures, 1>(p, feature_begin, row); break;
    default: break;
  }
}

template <class Simd, WeightCodes kCodes, bool kRoundBf16 = false>
void skinny_run(const SkinnyLinearParams& p) {
  const int64_t groups = (p.out_features + kFeatureBlock - 1) / kFeatureBlock;
#pragma omp parallel for schedule(static) if (p.out_features * p.in_features > 65536)
  for (int64_t group = 0; group < groups; ++group) {
    const int64_t feature_begin = group * kFeatureBlock;
    switch (p.out_features - feature_begin < kFeatureBlock ? p.out_features - feature_begin : kFeatureBlock) {
      case 4: skinny_features<Simd, kCodes, kRoundBf16, 4>(p, feature_begin); break;
      case 3: skinny_features<Simd, kCodes, kRoundBf16, 3>(p, feature_begin); break;
      case 2: skinny_features<Simd, kCodes, kRoundBf16, 2>(p, feature_begin); break;
      default: skinny_features<Simd, kCodes, kRoundBf16, 1>(p, feature_begin); break;
    }
  }
}

template <class Simd>
void skinny_dispatch(const SkinnyLinearParams& p) {
  switch (p.codes) {
    case WeightCodes::F32: skinny_run<Simd, WeightCodes::F32>(p); break;
    case WeightCodes::BF16: skinny_run<Simd, WeightCodes::BF16>(p); break;
    case WeightCodes::FP8_E4M3:
      if (p.round_fp8_to_bf16) {
        skinny_run<Simd, WeightCodes::FP8_E4M3, true>(p);
      } else {
        skinny_run<Simd, WeightCodes::FP8_E4M3, false>(p);
      }
      break;
  }
}
