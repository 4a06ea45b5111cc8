// The CPU linear layers: the streamed decode kernel (skinny_linear) on every ISA this CPU has,
// with fp32, bf16 and fp8 weights, and PackedLinear on both sides of its decode/GEMM switch, in
// fp32 and bf16, against float64 sums of the exact dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/packed_linear.h"
#include "kernels/cpu/skinny_linear.h"
#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {
namespace {

// A weight in every storage the kernels take, with the fp32 values each stands for.
struct TestWeight {
  int64_t out = 0, in = 0;
  std::vector<uint8_t> fp8_codes;
  std::vector<float> fp8_scales;
  int64_t scale_cols = 0;
  std::vector<float> fp8_values;  // code * scale, as fp8_dequant_blocks computes it
  std::vector<uint16_t> bf16_bits;
  std::vector<float> bf16_values;
  std::vector<float> f32_values;
};

TestWeight make_weight(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::uniform_int_distribution<int> code(0, 255);
  TestWeight w;
  w.out = out;
  w.in = in;
  w.scale_cols = (in + kFp8BlockSize - 1) / kFp8BlockSize;
  const int64_t count = out * in;
  for (int64_t i = 0; i < count; ++i) {
    int c = code(rng);
    if ((c & 0x7f) == 0x7f) c ^= 1;  // every finite code, subnormals included; no NaN
    w.fp8_codes.push_back(static_cast<uint8_t>(c));
    w.f32_values.push_back(uniform(rng));
    w.bf16_bits.push_back(f32_to_bf16_bits(uniform(rng)));
    w.bf16_values.push_back(bf16_bits_to_f32(w.bf16_bits.back()));
  }
  for (int64_t i = 0; i < ((out + kFp8BlockSize - 1) / kFp8BlockSize) * w.scale_cols; ++i) {
    w.fp8_scales.push_back(std::ldexp(0.75f + 0.25f * uniform(rng), -12 + static_cast<int>(i % 5)));
  }
  w.fp8_values.resize(static_cast<size_t>(count));
  Fp8DequantParams dequant;
  dequant.weight = w.fp8_codes.data();
  dequant.scale = w.fp8_scales.data();
  dequant.out = w.fp8_values.data();
  dequant.rows = out;
  dequant.cols = in;
  dequant.scale_cols = w.scale_cols;
  fp8_dequant_blocks(dequant);
  return w;
}

std::vector<float> random_x(int64_t rows, int64_t stride, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(rows * stride));
  for (float& value : x) value = round_to_bf16(uniform(rng));  // bf16 values serve both precisions
  return x;
}

// Checks y against float64 sums of the fp32 values, relative to sum |w x| (what rounding scales with).
void expect_matches(const std::vector<float>& y, int64_t y_stride, const std::vector<float>& x, int64_t x_stride,
                    const std::vector<float>& values, int64_t rows, int64_t out, int64_t in, double tolerance,
                    const std::string& what) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < out; ++f) {
      double sum = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        const double product = static_cast<double>(values[f * in + i]) * x[r * x_stride + i];
        sum += product;
        magnitude += std::fabs(product);
      }
      ASSERT_NEAR(y[r * y_stride + f], sum, tolerance * magnitude + 1e-30)
          << what << ", row " << r << ", feature " << f;
    }
  }
}

using IsaKernel = void (*)(const SkinnyLinearParams&);

struct IsaCase {
  const char* name;
  IsaKernel kernel;
  bool available;
};

std::vector<IsaCase> isa_cases() {
  const CpuFeatures& f = cpu_features();
  return {{"portable", skinny_linear_portable, true},
          {"avx2", skinny_linear_avx2, f.avx2_fma},
          {"avx512", skinny_linear_avx512, f.avx512}};
}

class SkinnyLinearIsa : public testing::TestWithParam<IsaCase> {};

// Shapes with a column tail (in % 16 != 0), a partial 128 block of scales in both directions, a
// feature tail (out % 4 != 0), and 1..9 rows (row tails of the 4-row blocking, strided x and y).
TEST_P(SkinnyLinearIsa, MatchesFloat64OnEveryStorage) {
  const IsaCase& isa = GetParam();
  if (!isa.available) GTEST_SKIP() << "this CPU does not report " << isa.name;
  for (const auto& [out, in] : {std::pair<int64_t, int64_t>{13, 300}, {261, 392}, {4, 16}}) {
    const TestWeight w = make_weight(out, in, static_cast<uint32_t>(out * 7 + in));
    for (int64_t rows = 1; rows <= 9; ++rows) {
      const int64_t x_stride = in + 5, y_stride = out + 3;
      const std::vector<float> x = random_x(rows, x_stride, static_cast<uint32_t>(rows));
      for (const WeightCodes codes : {WeightCodes::F32, WeightCodes::BF16, WeightCodes::FP8_E4M3}) {
        std::vector<float> y(static_cast<size_t>(rows * y_stride), NAN);
        SkinnyLinearParams p;
        p.x = x.data();
        p.x_stride = x_stride;
        p.rows = rows;
        p.codes = codes;
        p.weight = codes == WeightCodes::F32    ? static_cast<const void*>(w.f32_values.data())
                   : codes == WeightCodes::BF16 ? static_cast<const void*>(w.bf16_bits.data())
                                                : static_cast<const void*>(w.fp8_codes.data());
        p.block_scales = w.fp8_scales.data();
        p.scale_cols = w.scale_cols;
        p.y = y.data();
        p.y_stride = y_stride;
        p.out_features = out;
        p.in_features = in;
        isa.kernel(p);
        const std::vector<float>& values = codes == WeightCodes::F32    ? w.f32_values
                                           : codes == WeightCodes::BF16 ? w.bf16_values
                                                                        : w.fp8_values;
        expect_matches(y, y_stride, x, x_stride, values, rows, out, in, 4e-7 * std::sqrt(static_cast<double>(in)),
                       std::string(isa.name) + " " + std::to_string(out) + "x" + std::to_string(in) + " rows " +
                           std::to_string(rows) + " codes " + std::to_string(static_cast<int>(codes)));
        for (int64_t r = 0; r < rows; ++r) {  // the padding between rows of y is left alone
          for (int64_t f = out; f < y_stride; ++f) ASSERT_TRUE(std::isnan(y[r * y_stride + f]));
        }
      }
    }
  }
}

// With x one-hot, y is one weight times 1: every fp8 code (subnormals, both signs) under scales
// from 2^-40 to 255 converts to exactly code * scale, as fp8_dequant_blocks does.
TEST_P(SkinnyLinearIsa, Fp8ConversionIsExactForEveryCodeAndScale) {
  const IsaCase& isa = GetParam();
  if (!isa.available) GTEST_SKIP() << "this CPU does not report " << isa.name;
  const int64_t out = 256, in = 128;
  std::vector<uint8_t> codes(static_cast<size_t>(out * in));
  for (int64_t f = 0; f < out; ++f) {
    for (int64_t i = 0; i < in; ++i) {
      const int64_t code = (f + i) % 256;
      codes[f * in + i] = static_cast<uint8_t>((code & 0x7f) == 0x7f ? 0 : code);  // NaN codes are refused at load
    }
  }
  for (const float scale : {0x1p-40f, 3.1e-5f, 1.0f, 17.25f, 255.0f}) {
    const std::vector<float> scales = {scale, scale * 0.5f};
    for (const int64_t column : {int64_t{0}, int64_t{37}, int64_t{127}}) {
      std::vector<float> x(static_cast<size_t>(in), 0.0f), y(static_cast<size_t>(out));
      x[column] = 1.0f;
      SkinnyLinearParams p;
      p.x = x.data();
      p.x_stride = in;
      p.rows = 1;
      p.codes = WeightCodes::FP8_E4M3;
      p.weight = codes.data();
      p.block_scales = scales.data();
      p.scale_cols = 1;
      p.y = y.data();
      p.y_stride = out;
      p.out_features = out;
      p.in_features = in;
      isa.kernel(p);
      for (int64_t f = 0; f < out; ++f) {
        const uint8_t code = codes[f * in + column];
        const float expected = fp8_e4m3_to_f32(code) * scales[f / 128];
        ASSERT_EQ(y[f], expected) << isa.name << ": code 0x" << std::hex << int{code} << std::dec << ", scale "
                                  << scale;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, SkinnyLinearIsa, testing::ValuesIn(isa_cases()),
                         [](const testing::TestParamInfo<IsaCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

// PackedLinear on both sides of kSkinnyMaxRows, for every storage it chooses, counting its FLOPs.
// y[rows, out] (row stride y_stride) = x[rows, in] (row stride x_stride) W^T, as a layer calls it.
PackedLinearCall linear_call(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows,
                             bool round_to_bf16) {
  PackedLinearCall call;
  call.x = x;
  call.x_stride = x_stride;
  call.y = y;
  call.y_stride = y_stride;
  call.rows = rows;
  call.round_to_bf16 = round_to_bf16;
  return call;
}

TEST(PackedLinear, MatchesFloat64OnBothSidesOfTheDecodeSwitch) {
  const int64_t out = 70, in = 264;
  const TestWeight w = make_weight(out, in, 5);
  struct Variant {
    const char* name;
    LinearPrecision precision;
    const std::vector<float>* values;
    bool fp8;
    bool streamed;  // expects the decode kernel for few rows
    double tolerance;
  };
  const Variant variants[] = {
      {"fp32 on fp8", LinearPrecision::FP32, &w.fp8_values, true, true, 1e-5},
      {"fp32 on bf16", LinearPrecision::FP32, &w.bf16_values, false, true, 1e-5},
      {"fp32 on fp32", LinearPrecision::FP32, &w.f32_values, false, false, 1e-5},
      // bf16 operands are exact products with fp32 sums, and y is rounded to bf16 (2^-8 relative).
      // Its few-row steps stream the bf16 bits too (vdpbf16ps where the CPU has it).
      {"bf16", LinearPrecision::BF16, &w.bf16_values, false, true, 5e-3},
  };
  for (const Variant& v : variants) {
    Fp8Blocks blocks{w.fp8_codes.data(), w.fp8_scales.data(), w.scale_cols};
    const PackedLinear linear(v.values->data(), out, in, v.precision, v.fp8 ? &blocks : nullptr);
    EXPECT_EQ(linear.streamed_bytes() > 0, v.streamed) << v.name << ": " << linear.implementation();
    for (const int64_t rows : {int64_t{1}, int64_t{4}, kSkinnyMaxRows, kSkinnyMaxRows + 1, int64_t{67}}) {
      const int64_t x_stride = in + 8, y_stride = out + 2;
      const std::vector<float> x = random_x(rows, x_stride, static_cast<uint32_t>(rows + 100));
      std::vector<float> y(static_cast<size_t>(rows * y_stride), NAN);
      const PackedLinearCall call =
          linear_call(x.data(), x_stride, y.data(), y_stride, rows, v.precision == LinearPrecision::BF16);
      const int64_t flop_before = gemm_flop_executed();
      linear.forward(call);
      EXPECT_EQ(gemm_flop_executed() - flop_before, 2 * rows * out * in) << v.name << ", rows " << rows;
      expect_matches(y, y_stride, x, x_stride, *v.values, rows, out, in, v.tolerance,
                     std::string(v.name) + " (" + linear.implementation() + "), rows " + std::to_string(rows));
      if (call.round_to_bf16) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t f = 0; f < out; ++f) ASSERT_EQ(round_to_bf16(y[r * y_stride + f]), y[r * y_stride + f]);
        }
      }
    }
  }
}

// A layer converts its input to bf16 once for the linear layers it feeds (x_bf16): the result is
// the one the fp32 input rounded to bf16 gives, bit for bit, on oneDNN's path and on the BLAS one.
TEST(PackedLinear, Bf16InputBitsGiveTheSameOutputAsBf16Values) {
  const int64_t out = 70, in = 264;
  const TestWeight w = make_weight(out, in, 7);
  const CpuIsa isa = cpu_isa();
  for (const auto& [limit, rows] :
       {std::pair<CpuIsa, int64_t>{isa, 37}, {isa, 4}, {CpuIsa::Portable, 37}, {CpuIsa::Portable, 4}}) {
    set_cpu_isa_limit(limit);
    const PackedLinear linear(w.bf16_values.data(), out, in, LinearPrecision::BF16);
    std::vector<float> x = random_x(rows, in, 11);
    for (float& value : x) value *= 1.0001f;  // not all bf16 values: x_bf16 is their rounding
    std::vector<uint16_t> x_bf16(x.size());
    std::vector<float> x_rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      x_bf16[i] = f32_to_bf16_bits(x[i]);
      x_rounded[i] = round_to_bf16(x[i]);
    }
    std::vector<float> from_values(static_cast<size_t>(rows * out)), from_bits(from_values.size());
    PackedLinearCall call = linear_call(x_rounded.data(), in, from_values.data(), out, rows, true);
    linear.forward(call);
    call.x = x.data();  // must not be read
    call.x_bf16 = x_bf16.data();
    call.y = from_bits.data();
    linear.forward(call);
    EXPECT_EQ(from_bits, from_values) << linear.implementation() << ", rows " << rows;
  }
  set_cpu_isa_limit(isa);

  const PackedLinear fp32(w.f32_values.data(), out, in, LinearPrecision::FP32);
  std::vector<uint16_t> bits(static_cast<size_t>(in));
  std::vector<float> y(static_cast<size_t>(out));
  PackedLinearCall call;
  call.x_bf16 = bits.data();
  call.y = y.data();
  call.y_stride = out;
  call.rows = 1;
  EXPECT_THROW(fp32.forward(call), std::invalid_argument);
}

// y_bf16: the output as bf16 numbers, bit for bit the bits of the rounded fp32 output, on every
// path (oneDNN writing them itself, the streamed kernel, OpenBLAS).
TEST(PackedLinear, Bf16OutputBitsAreTheRoundedOutputsBits) {
  const int64_t out = 70, in = 264;
  const TestWeight w = make_weight(out, in, 13);
  const CpuIsa isa = cpu_isa();
  for (const auto& [limit, rows] :
       {std::pair<CpuIsa, int64_t>{isa, 37}, {isa, 4}, {CpuIsa::Portable, 37}, {CpuIsa::Portable, 4}}) {
    set_cpu_isa_limit(limit);
    const PackedLinear linear(w.bf16_values.data(), out, in, LinearPrecision::BF16);
    const std::vector<float> x = random_x(rows, in, 17);
    std::vector<float> y(static_cast<size_t>(rows * out));
    linear.forward(linear_call(x.data(), in, y.data(), out, rows, true));
    std::vector<uint16_t> bits(y.size(), 0xffff);
    PackedLinearCall call = linear_call(x.data(), in, nullptr, 0, rows, true);
    call.y_bf16 = bits.data();
    linear.forward(call);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_EQ(bits[i], f32_to_bf16_bits(y[i])) << linear.implementation() << ", rows " << rows << ", element " << i;
    }
  }
  set_cpu_isa_limit(isa);
  const PackedLinear fp32(w.f32_values.data(), out, in, LinearPrecision::FP32);
  const std::vector<float> x = random_x(1, in, 3);
  std::vector<uint16_t> bits(static_cast<size_t>(out));
  PackedLinearCall call = linear_call(x.data(), in, nullptr, 0, 1, true);
  call.y_bf16 = bits.data();
  EXPECT_THROW(fp32.forward(call), std::invalid_argument);
}

// bf16 x with bf16 weights (bf16 compute's decode steps): AMX tile products where the CPU has
// them, vdpbf16ps with AVX512_BF16, x widened for the fp32 bodies on every lower level. Shapes
// with a column tail (in % 32 != 0, which AMX leaves to vdpbf16ps), whole tiles with and without
// a feature tail (out % 32), and 1..16 rows.
TEST(SkinnyLinear, Bf16InputMatchesFloat64OnEveryIsa) {
  const CpuIsa isa = cpu_isa();
  for (const CpuIsa limit : {CpuIsa::Amx, CpuIsa::Avx512Bf16, CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Portable}) {
    if (limit > best_cpu_isa(cpu_features())) continue;  // reported as the skip below when none runs
    set_cpu_isa_limit(limit);
    for (const auto& [out, in] :
         {std::pair<int64_t, int64_t>{13, 300}, {261, 392}, {4, 16}, {9, 64}, {70, 256}, {64, 96}, {32, 2048}}) {
      const TestWeight w = make_weight(out, in, static_cast<uint32_t>(out * 5 + in));
      for (const int64_t rows : {1, 2, 3, 4, 5, 7, 9, 16}) {
        const int64_t y_stride = out + 3;
        const std::vector<float> x = random_x(rows, in, static_cast<uint32_t>(rows + 40));
        std::vector<uint16_t> x_bf16(x.size());
        for (size_t i = 0; i < x.size(); ++i) x_bf16[i] = f32_to_bf16_bits(x[i]);
        std::vector<float> y(static_cast<size_t>(rows * y_stride), NAN);
        SkinnyLinearParams p;
        p.x_bf16 = x_bf16.data();
        p.rows = rows;
        p.codes = WeightCodes::BF16;
        p.weight = w.bf16_bits.data();
        p.y = y.data();
        p.y_stride = y_stride;
        p.out_features = out;
        p.in_features = in;
        skinny_linear(p);
        expect_matches(y, y_stride, x, in, w.bf16_values, rows, out, in, 4e-7 * std::sqrt(static_cast<double>(in)),
                       std::string(cpu_isa_name(limit)) + " " + std::to_string(out) + "x" + std::to_string(in) +
                           " rows " + std::to_string(rows));
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t f = out; f < y_stride; ++f) ASSERT_TRUE(std::isnan(y[r * y_stride + f]));
        }
      }
    }
  }
  set_cpu_isa_limit(isa);
  SkinnyLinearParams fp8;
  const std::vector<uint16_t> bits(16);
  fp8.x_bf16 = bits.data();
  fp8.rows = 1;
  fp8.codes = WeightCodes::FP8_E4M3;
  fp8.out_features = 1;
  fp8.in_features = 16;
  EXPECT_THROW(skinny_linear(fp8), std::invalid_argument);
  if (!cpu_features().amx_bf16 || !amx_tiles_permitted()) {
    GTEST_SKIP() << "no AMX tiles here" << (cpu_features().avx512_bf16 ? "" : " and no avx512_bf16")
                 << ": the paths this CPU has ran, the others did not";
  }
}

// bf16 compute keeps one copy of a weight, its bf16 bits: streamed by the decode steps and, on
// AMX for weights of 2048+ input features, handed to oneDNN as they are for the longer steps.
TEST(PackedLinear, Bf16WeightIsHeldOnceAndServesBothStepKinds) {
  const int64_t out = 48, in = 2048;
  const TestWeight w = make_weight(out, in, 9);
  const PackedLinear linear(w.bf16_values.data(), out, in, LinearPrecision::BF16);
  EXPECT_EQ(linear.bytes(), out * in * 2) << "a decode-only layer holds the bits alone";
  EXPECT_EQ(linear.bytes_read(4), out * in * 2);
  for (const int64_t rows : {int64_t{4}, int64_t{64}}) {
    const std::vector<float> x = random_x(rows, in, static_cast<uint32_t>(rows));
    std::vector<float> y(static_cast<size_t>(rows * out));
    linear.forward(linear_call(x.data(), in, y.data(), out, rows, true));
    expect_matches(y, out, x, in, w.bf16_values, rows, out, in, 5e-3, linear.implementation());
  }
  if (!have_onednn() || !cpu_features().amx_bf16 || cpu_isa() < CpuIsa::Amx) {
    // The longer step built a GEMM operand of its own (blocked bf16, or fp32 for sgemm).
    GTEST_SKIP() << "no AMX here (" << linear.implementation() << "): the plain-weight view is not used";
  }
  EXPECT_NE(linear.implementation().find("plain weight"), std::string::npos) << linear.implementation();
  EXPECT_EQ(linear.bytes(), out * in * 2) << "the GEMM reads the same bits: " << linear.implementation();
  EXPECT_EQ(linear.bytes_read(64), out * in * 2);
}

TEST(CpuFeatures, AnUnknownIsaNameIsRefusedNamingTheVariable) {
  EXPECT_EQ(parse_cpu_isa("avx2", "MLA_CPU_ISA"), CpuIsa::Avx2);
  try {
    parse_cpu_isa("avx1024", "MLA_CPU_ISA");
    FAIL() << "accepted avx1024";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("MLA_CPU_ISA = 'avx1024'"), std::string::npos) << e.what();
  }
  EXPECT_LE(static_cast<int>(cpu_isa()), static_cast<int>(best_cpu_isa(cpu_features())));
}

}  // namespace
}  // namespace mla
