// The order kernels/cuda/fp8_linear streams an fp8 weight's codes in (fp8_linear_pack, host code,
// so it runs here without a GPU): read as the kernel reads it, lane by lane into the tensor cores'
// operand fragments (PTX mma.m16n8k16: b0, b1 hold inputs 2t, 2t+1 of output g; b2, b3 inputs
// 2t+8, 2t+9), it must give back y = x W^T of the row-major weight, as skinny_linear computes it.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/skinny_linear.h"
#include "tests/ops/test_data.h"
#include "tests/test_util.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/fp8_linear.h"
#endif

namespace mla::test {
namespace {

#if MLA_HAVE_CUDA

// y [rows, out] from the packed codes as the kernel's warps consume them: for every 8 outputs
// (tile), 64 inputs (chunk) and 16 of those (kk), lane l's word kk of its 16 bytes is one operand
// fragment of output tile * 8 + l / 4.
std::vector<double> through_the_fragments(const std::vector<uint8_t>& packed, const std::vector<float>& x,
                                          const std::vector<float>& scales, int64_t scale_cols, int64_t rows,
                                          int64_t out, int64_t in) {
  std::vector<double> y(static_cast<size_t>(rows * out), 0.0);
  const int64_t chunks = in / 64;
  for (int64_t tile = 0; tile < out / 8; ++tile) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const float scale = scales[(tile * 8 / 128) * scale_cols + chunk * 64 / 128];
      for (int kk = 0; kk < 4; ++kk) {
        double b[16][8] = {};  // the 16 x 8 operand: inputs by outputs
        for (int lane = 0; lane < 32; ++lane) {
          const int group = lane / 4, pair = lane % 4;
          const uint8_t* word = &packed[static_cast<size_t>(((tile * chunks + chunk) * 32 + lane) * 16 + kk * 4)];
          const int inputs[4] = {2 * pair, 2 * pair + 1, 2 * pair + 8, 2 * pair + 9};
          for (int j = 0; j < 4; ++j) b[inputs[j]][group] = round_to_bf16(fp8_e4m3_to_f32(word[j]) * scale);
        }
        for (int64_t r = 0; r < rows; ++r) {
          for (int n = 0; n < 8; ++n) {
            for (int k = 0; k < 16; ++k) {
              y[r * out + tile * 8 + n] += static_cast<double>(x[r * in + chunk * 64 + kk * 16 + k]) * b[k][n];
            }
          }
        }
      }
    }
  }
  return y;
}

TEST(Fp8LinearPack, TheFragmentsTheKernelReadsGiveTheWeightsProduct) {
  const int64_t rows = 5;
  for (const auto& [out, in] : {std::pair<int64_t, int64_t>{16, 64}, {48, 320}, {144, 448}}) {
    std::vector<uint8_t> codes;
    for (const float value : random_floats(out * in, static_cast<uint32_t>(out + in))) {
      codes.push_back(f32_to_fp8_e4m3(value * 448.0f));
    }
    const int64_t scale_cols = (in + 127) / 128;
    const std::vector<float> scales = random_floats(((out + 127) / 128) * scale_cols, 3, 0.001f, 0.01f);
    std::vector<float> x = random_floats(rows * in, 9);
    round_to_bf16_inplace(x.data(), static_cast<int64_t>(x.size()));

    std::vector<float> want(static_cast<size_t>(rows * out));
    SkinnyLinearParams p;
    p.x = x.data();
    p.x_stride = in;
    p.rows = rows;
    p.codes = WeightCodes::FP8_E4M3;
    p.weight = codes.data();
    p.block_scales = scales.data();
    p.scale_cols = scale_cols;
    p.round_fp8_to_bf16 = true;
    p.y = want.data();
    p.y_stride = out;
    p.out_features = out;
    p.in_features = in;
    skinny_linear(p);

    const std::vector<uint8_t> packed = fp8_linear_pack(codes.data(), out, in);
    ASSERT_EQ(packed.size(), codes.size());
    const std::vector<double> got = through_the_fragments(packed, x, scales, scale_cols, rows, out, in);
    EXPECT_LE(relative_l2(want, got), 1e-6) << out << " x " << in;
  }
  EXPECT_THROW(fp8_linear_pack(nullptr, 24, 64), std::invalid_argument);  // outputs not a multiple of 16
  EXPECT_THROW(fp8_linear_pack(nullptr, 16, 96), std::invalid_argument);  // inputs not a multiple of 64
  EXPECT_TRUE(fp8_linear_fits(576, 7168));                                // DeepSeek-V3's wkv_a
}

#else

TEST(Fp8LinearPack, TheFragmentsTheKernelReadsGiveTheWeightsProduct) {
  GTEST_SKIP() << "built without the CUDA backend (fp8_linear_pack is part of it)";
}

#endif

}  // namespace
}  // namespace mla::test
