// Each CPU op against the float64 reference (or against its definition where the reference has
// no twin), on awkward sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/bf16.h"
#include "kernels/cpu/fp8.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/kv_cache_append.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cpu/strided_copy.h"
#include "tests/reference/mla_reference.h"

namespace mla {
namespace {

std::vector<float> random_values(size_t count, uint64_t seed, float amplitude = 1.0f) {
  std::mt19937_64 generator(seed);
  std::uniform_real_distribution<float> uniform(-amplitude, amplitude);
  std::vector<float> values(count);
  for (float& value : values) value = uniform(generator);
  return values;
}

std::vector<double> to_double(const std::vector<float>& values) { return {values.begin(), values.end()}; }

TEST(Linear, MatchesReferenceOnOddShapes) {
  const int64_t rows = 7, in = 131, out = 67;
  const std::vector<float> x = random_values(rows * in, 1), w = random_values(out * in, 2);
  std::vector<float> y(rows * out);
  linear({x.data(), in, w.data(), y.data(), out, rows, in, out, false});
  EXPECT_LE(ref::relative_l2(y.data(), ref::linear(to_double(x), rows, in, to_double(w), out)), 1e-6);
}

TEST(RmsNorm, MatchesReferenceWithStridesAndInPlace) {
  const int64_t rows = 5, dim = 77, stride = 80;
  std::vector<float> x = random_values(rows * stride, 3, 4.0f);
  const std::vector<float> weight = random_values(dim, 4);
  std::vector<double> packed;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim; ++i) packed.push_back(x[r * stride + i]);
  const std::vector<double> want = ref::rmsnorm(packed, rows, to_double(weight));
  rmsnorm({x.data(), stride, weight.data(), x.data(), stride, rows, dim, 1e-6f, false});
  std::vector<float> got;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim; ++i) got.push_back(x[r * stride + i]);
  EXPECT_LE(ref::relative_l2(got.data(), want), 1e-6);
}

TEST(RmsNorm, Bf16RoundsLikeDeepSeek) {
  const std::vector<float> x = {0.3f, -1.7f, 2.5f}, weight = {round_to_bf16(1.1f), round_to_bf16(0.9f), 1.0f};
  std::vector<float> y(3);
  rmsnorm({x.data(), 3, weight.data(), y.data(), 3, 1, 3, 1e-6f, true});
  const double inv_rms = 1.0 / std::sqrt((0.09 + 2.89 + 6.25) / 3.0 + 1e-6);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(y[i], round_to_bf16(y[i])) << "not a bf16 value";
    EXPECT_NEAR(y[i], x[i] * inv_rms * weight[i], 1e-2 * std::fabs(x[i] * inv_rms * weight[i]));
  }
}

std::vector<uint16_t> bf16_bits_of(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = f32_to_bf16_bits(values[i]);
  return bits;
}

// The same rows as bf16 numbers, in place (as the CPU layer normalizes its q latent between two
// bf16 GEMMs), give the bits of the fp32 path's bf16 values; strided rows leave the gaps alone.
TEST(RmsNorm, Bf16NumbersInPlaceEqualTheFp32PathsValues) {
  const int64_t rows = 6, dim = 77, stride = 80;
  std::vector<float> x = random_values(rows * stride, 7, 3.0f);
  for (float& value : x) value = round_to_bf16(value);
  std::vector<float> weight = random_values(dim, 8);
  for (float& value : weight) value = round_to_bf16(value);
  std::vector<float> want(x.size());
  rmsnorm({x.data(), stride, weight.data(), want.data(), stride, rows, dim, 1e-6f, true});
  std::vector<uint16_t> bits = bf16_bits_of(x);
  const std::vector<uint16_t> before = bits;
  RmsNormParams norm{nullptr, stride, weight.data(), nullptr, stride, rows, dim, 1e-6f, true};
  norm.x_bf16 = bits.data();
  norm.y_bf16 = bits.data();
  rmsnorm(norm);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < stride; ++i) {
      const int64_t at = r * stride + i;
      if (i < dim) {
        ASSERT_EQ(bits[at], f32_to_bf16_bits(want[at])) << "row " << r << " element " << i;
      } else {
        ASSERT_EQ(bits[at], before[at]) << "gap written at row " << r << " element " << i;
      }
    }
  }
  norm.round_to_bf16 = false;  // bf16 numbers in an fp32 step: refused
  EXPECT_THROW(rmsnorm(norm), std::invalid_argument);
}

RopeFrequencyParams yarn_params() {
  RopeFrequencyParams p;
  p.rope_dim = 64;
  p.yarn = true;
  p.rope_factor = 40.0;
  p.original_seq_len = 4096;
  return p;
}

ref::RefConfig yarn_reference_config() {
  ref::RefConfig c;
  c.qk_rope_head_dim = 64;
  c.max_seq_len = 16384;  // > original_seq_len: YaRN on
  c.original_seq_len = 4096;
  return c;
}

TEST(Rope, YarnFrequenciesMatchReference) {
  const std::vector<double> got = rope_frequencies(yarn_params());
  const std::vector<double> want = ref::rope_frequencies(yarn_reference_config());
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15 * std::fabs(want[i]) + 1e-300) << i;
  RopeFrequencyParams plain = yarn_params();
  plain.yarn = false;
  ref::RefConfig plain_config = yarn_reference_config();
  plain_config.max_seq_len = 4096;
  const std::vector<double> plain_got = rope_frequencies(plain), plain_want = ref::rope_frequencies(plain_config);
  for (size_t i = 0; i < plain_got.size(); ++i) EXPECT_NEAR(plain_got[i], plain_want[i], 1e-15) << i;
}

// Positions far into a long cache: the angle must be formed in double.
TEST(Rope, RotationMatchesReferenceAtLargePositions) {
  const RopeFrequencyParams params = yarn_params();
  const int64_t positions = 16384, heads = 3, seq = 4, start_pos = positions - seq;
  const RopeTable table = make_rope_table(params, positions);
  std::vector<float> x = random_values(seq * heads * params.rope_dim, 5);
  std::vector<double> want = to_double(x);
  const std::vector<double> freqs = ref::rope_frequencies(yarn_reference_config());
  for (int64_t s = 0; s < seq; ++s)
    for (int64_t h = 0; h < heads; ++h) ref::rope_apply(want.data() + (s * heads + h) * 64, 64, start_pos + s, freqs);
  RopeParams rope;
  rope.x = x.data();
  rope.batch = 1;
  rope.seq = seq;
  rope.token_stride = heads * 64;
  rope.vecs_per_token = heads;
  rope.vec_stride = 64;
  rope.start_pos = start_pos;
  rope.table = &table;
  rope_apply(rope);
  EXPECT_LE(ref::relative_l2(x.data(), want), 1e-6);
}

// bf16 numbers rotated in place (q_pe of the CPU layer's AMX path) give the bits of the fp32
// path's bf16 values, the nope part of each head untouched.
TEST(Rope, Bf16NumbersEqualTheFp32PathsValues) {
  const RopeFrequencyParams params = yarn_params();
  const int64_t heads = 3, seq = 5, batch = 2, head_dim = 96, start_pos = 4000;
  const RopeTable table = make_rope_table(params, 8192);
  std::vector<float> x = random_values(batch * seq * heads * head_dim, 9, 2.0f);
  for (float& value : x) value = round_to_bf16(value);
  std::vector<uint16_t> bits = bf16_bits_of(x);
  const std::vector<uint16_t> before = bits;
  RopeParams rope;
  rope.x = x.data() + (head_dim - 64);
  rope.batch = batch;
  rope.seq = seq;
  rope.token_stride = heads * head_dim;
  rope.vecs_per_token = heads;
  rope.vec_stride = head_dim;
  rope.start_pos = start_pos;
  rope.table = &table;
  rope.round_to_bf16 = true;
  rope_apply(rope);
  rope.x = nullptr;
  rope.x_bf16 = bits.data() + (head_dim - 64);
  rope_apply(rope);
  for (size_t i = 0; i < bits.size(); ++i) {
    if (static_cast<int64_t>(i) % head_dim < head_dim - 64) {
      ASSERT_EQ(bits[i], before[i]) << "the nope part written at " << i;
    } else {
      ASSERT_EQ(bits[i], f32_to_bf16_bits(x[i])) << "at " << i;
    }
  }
  rope.round_to_bf16 = false;
  EXPECT_THROW(rope_apply(rope), std::invalid_argument);
}

TEST(Fp8, EveryCodeDecodesLikeTheReference) {
  for (int code = 0; code < 256; ++code) {
    const double want = ref::fp8_e4m3_value(static_cast<uint8_t>(code));
    const float got = fp8_e4m3_to_f32(static_cast<uint8_t>(code));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << code;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << code;
    }
  }
}

TEST(Fp8, EncodeRoundsToNearestAndSaturates) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(fp8_e4m3_to_f32(static_cast<uint8_t>(code)))),
              fp8_e4m3_to_f32(static_cast<uint8_t>(code)));
  }
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1000.0f)), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(-1000.0f)), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1.07f)), 1.125f) << "steps of 1/8 between 1 and 2";
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1.0625f)), 1.0f) << "a tie goes to the even code";
  EXPECT_EQ(fp8_e4m3_to_f32(f32_to_fp8_e4m3(1.1875f)), 1.25f) << "a tie goes to the even code";
}

TEST(Fp8, BlockDequantMatchesReferenceWithPartialBlocks) {
  const int64_t rows = 130, cols = 200, scale_cols = 2;  // scales [2, 2]: partial blocks on both axes
  std::vector<uint8_t> codes(rows * cols);
  std::mt19937 generator(7);
  for (uint8_t& code : codes)
    code = static_cast<uint8_t>(generator() % 0x7f) | static_cast<uint8_t>(generator() & 0x80);
  const std::vector<float> scales = {0.5f, 0.25f, 2.0f, 0.125f};
  std::vector<float> got(rows * cols);
  fp8_dequant_blocks({codes.data(), scales.data(), got.data(), rows, cols, scale_cols, false});
  EXPECT_EQ(ref::relative_l2(got.data(), ref::fp8_dequant(codes, rows, cols, scales)), 0.0);
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(round_to_bf16(1.0f), 1.0f);
  EXPECT_EQ(round_to_bf16(1.0f + 1.0f / 256.0f), 1.0f) << "halfway rounds to even";
  EXPECT_EQ(round_to_bf16(1.0f + 3.0f / 256.0f), 1.0f + 1.0f / 64.0f) << "halfway rounds to even (up)";
  EXPECT_TRUE(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_to_bf16(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
}

TEST(Softmax, ExactAgainstDoubleAndIgnoresMinusInfinity) {
  std::vector<float> scores = random_values(257, 9, 30.0f);
  scores[3] = -std::numeric_limits<float>::infinity();
  std::vector<double> want(scores.size());
  double max_score = -1e300, sum = 0.0;
  for (float s : scores) max_score = std::max(max_score, static_cast<double>(s));
  for (size_t t = 0; t < scores.size(); ++t) sum += want[t] = std::exp(static_cast<double>(scores[t]) - max_score);
  for (double& p : want) p /= sum;
  softmax_row(scores.data(), static_cast<int64_t>(scores.size()), false);
  EXPECT_EQ(scores[3], 0.0f);
  EXPECT_LE(ref::relative_l2(scores.data(), want), 1e-6);
}

// ulps between two finite floats of the same sign.
int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, sizeof(ia));
  std::memcpy(&ib, &b, sizeof(ib));
  return std::abs(static_cast<int64_t>(ia) - static_cast<int64_t>(ib));
}

TEST(Softmax, VectorExpWithinTwoUlpOfStdExp) {
  int64_t worst = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.000731f) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    worst = std::max(worst, ulp_distance(exp_nonpositive(x), want));
  }
  EXPECT_LE(worst, 2);
  EXPECT_EQ(exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(exp_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(exp_nonpositive(-90.0f), 0.0f);
  EXPECT_TRUE(std::isnan(exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
}

// scores_to_probs against the rounding sequence docs/design.md gives, written out one score at a time.
TEST(Softmax, ScoresToProbsRoundsWhereDeepSeekRounds) {
  const int64_t len = 37;
  const float scale = 0.0721f;
  const std::vector<float> dots = random_values(len, 3, 40.0f);
  const std::vector<float> tails = random_values(len, 4, 10.0f);
  std::vector<float> mask = random_values(len, 5, 1.0f);
  mask[6] = -std::numeric_limits<float>::infinity();
  for (bool split : {false, true}) {
    for (bool masked : {false, true}) {
      for (bool bf16 : {false, true}) {
        if (split && !bf16) continue;  // split scores exist in bf16 mode only
        std::vector<double> want(len);
        double max_score = -1e300, sum = 0.0;
        for (int64_t t = 0; t < len; ++t) {
          float score;
          if (!bf16) {
            score = dots[t] * scale + (masked ? mask[t] : 0.0f);
          } else {
            const float dot =
                split ? round_to_bf16(round_to_bf16(dots[t]) + round_to_bf16(tails[t])) : round_to_bf16(dots[t]);
            score = round_to_bf16(dot * scale);
            if (masked) score = round_to_bf16(score + mask[t]);
          }
          want[t] = score;
          max_score = std::max(max_score, want[t]);
        }
        for (double& w : want) sum += w = std::exp(w - max_score);
        for (double& w : want) w /= sum;
        std::vector<float> got = dots;
        ScoreRow row;
        row.scores = got.data();
        row.tail = split ? tails.data() : nullptr;
        row.mask = masked ? mask.data() : nullptr;
        row.len = len;
        row.scale = scale;
        row.round_to_bf16 = bf16;
        scores_to_probs(row);
        SCOPED_TRACE(testing::Message() << "split " << split << " masked " << masked << " bf16 " << bf16);
        if (masked) {
          EXPECT_EQ(got[6], 0.0f);
        }
        for (int64_t t = 0; t < len; ++t) {
          if (bf16) {
            EXPECT_EQ(got[t], round_to_bf16(got[t]));  // probabilities are bf16 values
          }
          EXPECT_NEAR(got[t], want[t], bf16 ? 4e-3 * want[t] + 1e-30 : 1e-6 * want[t] + 1e-30) << "t " << t;
        }
      }
    }
  }
}

TEST(KvCacheAppend, WritesRowsAtTheirPositions) {
  const int64_t capacity = 6, width = 3, batch = 2, seq = 2, start_pos = 3;
  std::vector<float> cache(3 * capacity * width, -1.0f);
  std::vector<float> rows(batch * seq * width);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i);
  kv_cache_append({rows.data(), width, cache.data(), capacity, width, batch, seq, start_pos});
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      for (int64_t i = 0; i < width; ++i)
        EXPECT_EQ(cache[(b * capacity + start_pos + s) * width + i], rows[(b * seq + s) * width + i]);
  EXPECT_EQ(cache[(0 * capacity + 2) * width], -1.0f) << "earlier positions untouched";
  EXPECT_THROW(kv_cache_append({rows.data(), width, cache.data(), capacity, width, batch, seq, 5}), std::out_of_range);
}

TEST(StridedCopy, PlacesEveryVectorOfEveryBatchAndRepeatsAZeroStride) {
  // k_pe's layout: per sequence (batch) and position (outer) one vector, repeated for each head
  // (inner, source stride 0), the sequences at their own strides on both sides.
  StridedCopyParams p;
  p.batch = 2;
  p.outer = 3;
  p.inner = 4;
  p.width = 5;
  p.src_batch_stride = 23;
  p.src_outer_stride = 7;
  p.src_inner_stride = 0;
  p.dst_batch_stride = 3 * 4 * 6 + 1;
  p.dst_outer_stride = 4 * 6;
  p.dst_inner_stride = 6;
  std::vector<float> src(2 * 23);
  for (size_t i = 0; i < src.size(); ++i) src[i] = 0.5f + static_cast<float>(i);
  std::vector<float> dst(static_cast<size_t>(2 * p.dst_batch_stride), -1.0f);
  p.src = src.data();
  p.dst = dst.data();
  strided_copy(p);
  std::vector<float> want(dst.size(), -1.0f);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t k = 0; k < 5; ++k)
          want[static_cast<size_t>(n * p.dst_batch_stride + i * 24 + j * 6 + k)] =
              src[static_cast<size_t>(n * 23 + i * 7 + k)];
  EXPECT_EQ(dst, want);
}

}  // namespace
}  // namespace mla
