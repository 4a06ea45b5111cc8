// Self-checks of the float64 reference (tests/reference): properties that docs/design.md implies and that
// hold whatever the weights, plus hand-computed values for the small helpers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "tests/reference/mla_reference.h"

namespace {

using mla::ref::RefConfig;
using mla::ref::RefFormulation;
using mla::ref::RefMla;
using mla::ref::RefWeights;

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string seed_note(uint64_t seed) { return "seed " + std::to_string(seed); }

std::vector<double> uniform(std::mt19937_64& rng, int64_t n, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& e : v) e = dist(rng);
  return v;
}

// Small odd dims so that an index mix-up between dn, dr, dv, C or heads changes the result.
RefConfig small_config(int64_t q_lora_rank, bool yarn) {
  RefConfig c;
  c.dim = 40;
  c.n_heads = 3;
  c.q_lora_rank = q_lora_rank;
  c.kv_lora_rank = 18;
  c.qk_nope_head_dim = 7;
  c.qk_rope_head_dim = 6;
  c.v_head_dim = 9;
  c.max_seq_len = 32;
  c.original_seq_len = yarn ? 16 : 4096;
  c.rope_theta = yarn ? 50.0 : 10000.0;  // small theta puts the YaRN ramp inside the dr/2 range
  c.rope_factor = 4.0;
  return c;
}

// Linear weights ~ U(-1, 1) / sqrt(in) keep activations O(1); norm weights near 1.
RefWeights random_weights(const RefConfig& c, std::mt19937_64& rng) {
  const int64_t dq = c.qk_nope_head_dim + c.qk_rope_head_dim, C = c.kv_lora_rank, H = c.n_heads;
  auto linear_w = [&](int64_t out, int64_t in) {
    const double a = 1.0 / std::sqrt(static_cast<double>(in));
    return uniform(rng, out * in, -a, a);
  };
  RefWeights w;
  if (c.q_lora_rank == 0) {
    w.wq = linear_w(H * dq, c.dim);
  } else {
    w.wq_a = linear_w(c.q_lora_rank, c.dim);
    w.q_norm = uniform(rng, c.q_lora_rank, 0.5, 1.5);
    w.wq_b = linear_w(H * dq, c.q_lora_rank);
  }
  w.wkv_a = linear_w(C + c.qk_rope_head_dim, c.dim);
  w.kv_norm = uniform(rng, C, 0.5, 1.5);
  w.wkv_b = linear_w(H * (c.qk_nope_head_dim + c.v_head_dim), C);
  w.wo = linear_w(c.dim, H * c.v_head_dim);
  return w;
}

double rel_l2(const std::vector<double>& got, const std::vector<double>& want) {
  double diff_sq = 0.0, want_sq = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff_sq += (got[i] - want[i]) * (got[i] - want[i]);
    want_sq += want[i] * want[i];
  }
  return std::sqrt(diff_sq / want_sq);
}

// Tokens [from, from + count) of x [B, T, D] as a contiguous [B, count, D] block.
std::vector<double> token_slice(const std::vector<double>& x, int64_t batch, int64_t tokens, int64_t dim, int64_t from,
                                int64_t count) {
  std::vector<double> out(batch * count * dim);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < count; ++s)
      for (int64_t d = 0; d < dim; ++d) out[(b * count + s) * dim + d] = x[(b * tokens + from + s) * dim + d];
  return out;
}

// Runs x [B, T, D] through a fresh layer as consecutive chunks and reassembles y [B, T, D].
std::vector<double> run_schedule(const RefConfig& c, const RefWeights& w, int64_t batch, RefFormulation f,
                                 const std::vector<double>& x, const std::vector<int64_t>& chunks) {
  int64_t tokens = 0;
  for (int64_t n : chunks) tokens += n;
  RefMla layer(c, w, batch, f);
  std::vector<double> y(batch * tokens * c.dim);
  int64_t pos = 0;
  for (int64_t n : chunks) {
    const std::vector<double> part = layer.forward(token_slice(x, batch, tokens, c.dim, pos, n), n, pos);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t s = 0; s < n; ++s)
        for (int64_t d = 0; d < c.dim; ++d) y[(b * tokens + pos + s) * c.dim + d] = part[(b * n + s) * c.dim + d];
    pos += n;
  }
  return y;
}

std::vector<double> causal_mask(int64_t seq, int64_t start_pos) {
  const int64_t end_pos = start_pos + seq;
  std::vector<double> mask(seq * end_pos, 0.0);
  for (int64_t s = 0; s < seq; ++s)
    for (int64_t t = start_pos + s + 1; t < end_pos; ++t) mask[s * end_pos + t] = -kInf;
  return mask;
}

// docs/design.md, The fast path and the standard path: every formulation computes the same function. Prefill + decode
// and chunked prefill (p > 0, S > 1), with and without q_lora_rank, with and without YaRN.
TEST(Reference, NaiveAndAbsorbAgree) {
  const std::vector<std::vector<int64_t>> schedules = {{7, 1, 1, 1, 1, 1}, {5, 4, 3}, {1, 6, 1, 2}};
  uint64_t seed = 1000;
  for (int64_t q_lora_rank : {int64_t{0}, int64_t{11}}) {
    for (bool yarn : {false, true}) {
      for (const auto& schedule : schedules) {
        ++seed;
        SCOPED_TRACE(seed_note(seed) + " q_lora_rank " + std::to_string(q_lora_rank) + (yarn ? " yarn" : " plain"));
        std::mt19937_64 rng(seed);
        const RefConfig c = small_config(q_lora_rank, yarn);
        const RefWeights w = random_weights(c, rng);
        const int64_t batch = 2, tokens = 12;
        const std::vector<double> x = uniform(rng, batch * tokens * c.dim, -1.0, 1.0);
        const auto naive = run_schedule(c, w, batch, RefFormulation::Naive, x, schedule);
        const auto absorb = run_schedule(c, w, batch, RefFormulation::Absorb, x, schedule);
        EXPECT_LT(rel_l2(absorb, naive), 1e-12);
      }
    }
  }
}

// An explicit non-causal mask (padding of key 1, future keys visible) must give the same function
// in both formulations too (docs/design.md step 6: an explicit mask forces the standard path, either form).
TEST(Reference, NaiveAndAbsorbAgreeWithPaddingMask) {
  const uint64_t seed = 2001;
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const RefConfig c = small_config(11, true);
  const RefWeights w = random_weights(c, rng);
  const int64_t batch = 2, start_pos = 4, seq = 5, end_pos = start_pos + seq;
  const std::vector<double> prefix = uniform(rng, batch * start_pos * c.dim, -1.0, 1.0);
  const std::vector<double> x = uniform(rng, batch * seq * c.dim, -1.0, 1.0);
  std::vector<double> mask = uniform(rng, seq * end_pos, -2.0, 0.0);
  for (int64_t s = 0; s < seq; ++s) mask[s * end_pos + 1] = -kInf;
  RefMla naive(c, w, batch, RefFormulation::Naive), absorb(c, w, batch, RefFormulation::Absorb);
  naive.forward(prefix, start_pos, 0);
  absorb.forward(prefix, start_pos, 0);
  const auto y_naive = naive.forward(x, seq, start_pos, &mask);
  const auto y_absorb = absorb.forward(x, seq, start_pos, &mask);
  EXPECT_LT(rel_l2(y_absorb, y_naive), 1e-12);
  // The mask replaces the causal rule, so future keys now matter: the output must differ.
  RefMla causal(c, w, batch, RefFormulation::Naive);
  causal.forward(prefix, start_pos, 0);
  EXPECT_GT(rel_l2(causal.forward(x, seq, start_pos), y_naive), 1e-6);
}

// Per token, the output depends only on tokens <= its position, so chunking cannot change it. The
// extra terms a longer call sees are exact zeros (exp(-inf)), hence bitwise equality.
TEST(Reference, ChunkingDoesNotChangeOutputs) {
  const uint64_t seed = 3001;
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const RefConfig c = small_config(11, true);
  const RefWeights w = random_weights(c, rng);
  const int64_t batch = 2, tokens = 10;
  const std::vector<double> x = uniform(rng, batch * tokens * c.dim, -1.0, 1.0);
  for (RefFormulation f : {RefFormulation::Naive, RefFormulation::Absorb}) {
    SCOPED_TRACE(f == RefFormulation::Naive ? "naive" : "absorb");
    const auto prefill = run_schedule(c, w, batch, f, x, {10});
    EXPECT_EQ(run_schedule(c, w, batch, f, x, {4, 6}), prefill);
    EXPECT_EQ(run_schedule(c, w, batch, f, x, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}), prefill);
  }
}

// docs/design.md step 6: changing token j's input leaves every output before j unchanged and changes j's own.
TEST(Reference, CausalRule) {
  const uint64_t seed = 4001;
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const RefConfig c = small_config(0, false);
  const RefWeights w = random_weights(c, rng);
  const int64_t batch = 2, tokens = 9, changed = 6;
  const std::vector<double> x = uniform(rng, batch * tokens * c.dim, -1.0, 1.0);
  std::vector<double> x_changed = x;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t d = 0; d < c.dim; ++d) x_changed[(b * tokens + changed) * c.dim + d] += 0.5;
  for (RefFormulation f : {RefFormulation::Naive, RefFormulation::Absorb}) {
    for (const std::vector<int64_t>& schedule : {std::vector<int64_t>{9}, std::vector<int64_t>{3, 6}}) {
      const auto y = run_schedule(c, w, batch, f, x, schedule);
      const auto y_changed = run_schedule(c, w, batch, f, x_changed, schedule);
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t s = 0; s < tokens; ++s) {
          double diff = 0.0;
          for (int64_t d = 0; d < c.dim; ++d)
            diff += std::fabs(y[(b * tokens + s) * c.dim + d] - y_changed[(b * tokens + s) * c.dim + d]);
          if (s < changed) {
            EXPECT_EQ(diff, 0.0) << "batch " << b << " token " << s;
          } else {
            EXPECT_GT(diff, 0.0) << "batch " << b << " token " << s;
          }
        }
      }
    }
  }
}

// An explicit 0 / -inf mask equal to the causal one reproduces the default, for prefill and for a
// chunk at p > 0 (mask [S, e]).
TEST(Reference, ExplicitCausalMaskEqualsDefault) {
  const uint64_t seed = 5001;
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const RefConfig c = small_config(11, false);
  const RefWeights w = random_weights(c, rng);
  const int64_t batch = 2;
  const std::vector<double> x0 = uniform(rng, batch * 5 * c.dim, -1.0, 1.0);
  const std::vector<double> x1 = uniform(rng, batch * 4 * c.dim, -1.0, 1.0);
  for (RefFormulation f : {RefFormulation::Naive, RefFormulation::Absorb}) {
    RefMla implicit(c, w, batch, f), explicit_mask(c, w, batch, f);
    const auto mask0 = causal_mask(5, 0), mask1 = causal_mask(4, 5);
    EXPECT_EQ(explicit_mask.forward(x0, 5, 0, &mask0), implicit.forward(x0, 5, 0));
    EXPECT_EQ(explicit_mask.forward(x1, 4, 5, &mask1), implicit.forward(x1, 4, 5));
  }
}

TEST(Reference, RejectsBadShapes) {
  std::mt19937_64 rng(6001);
  const RefConfig c = small_config(0, false);
  RefWeights w = random_weights(c, rng);
  RefMla layer(c, w, 1, RefFormulation::Naive);
  EXPECT_THROW(layer.forward(std::vector<double>(c.dim * 2), 3, 0), std::invalid_argument);
  EXPECT_THROW(layer.forward(std::vector<double>(c.dim), 1, c.max_seq_len), std::invalid_argument);
  w.wo.pop_back();
  EXPECT_THROW(RefMla(c, w, 1, RefFormulation::Absorb), std::invalid_argument);
}

TEST(Reference, RopeRotatesPairsAndKeepsNorms) {
  const uint64_t seed = 7001;
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  RefConfig c = small_config(0, true);
  c.qk_rope_head_dim = 10;
  const std::vector<double> freqs = mla::ref::rope_frequencies(c);
  const std::vector<double> x = uniform(rng, 10, -1.0, 1.0);
  std::vector<double> at0 = x;
  mla::ref::rope_apply(at0.data(), 10, 0, freqs);
  EXPECT_EQ(at0, x);
  std::vector<double> at37 = x;
  mla::ref::rope_apply(at37.data(), 10, 37, freqs);
  for (int64_t i = 0; i < 5; ++i)
    EXPECT_NEAR(std::hypot(at37[2 * i], at37[2 * i + 1]), std::hypot(x[2 * i], x[2 * i + 1]), 1e-14);
  // Rotations compose: position 12 then 25 equals position 37.
  std::vector<double> twice = x;
  mla::ref::rope_apply(twice.data(), 10, 12, freqs);
  mla::ref::rope_apply(twice.data(), 10, 25, freqs);
  for (int64_t i = 0; i < 10; ++i) EXPECT_NEAR(twice[i], at37[i], 1e-13);
  // Direction and pairing: (1, 0) at angle a becomes (cos a, sin a), multiplication by e^{ia}.
  std::vector<double> unit = {1.0, 0.0, 0.0, 1.0};
  mla::ref::rope_apply(unit.data(), 4, 1, {0.5, 0.25});
  EXPECT_DOUBLE_EQ(unit[0], std::cos(0.5));
  EXPECT_DOUBLE_EQ(unit[1], std::sin(0.5));
  EXPECT_DOUBLE_EQ(unit[2], -std::sin(0.25));
  EXPECT_DOUBLE_EQ(unit[3], std::cos(0.25));
}

TEST(Reference, RopeFrequenciesPlainAndYarn) {
  RefConfig c;
  c.qk_rope_head_dim = 16;
  c.rope_theta = 10000.0;
  c.max_seq_len = 4096;  // == original_seq_len: YaRN off
  const std::vector<double> plain = mla::ref::rope_frequencies(c);
  ASSERT_EQ(plain.size(), 8u);
  for (int64_t i = 0; i < 8; ++i) EXPECT_DOUBLE_EQ(plain[i], std::pow(10000.0, -static_cast<double>(i) / 8.0));

  c.max_seq_len = 8192;  // YaRN on
  c.rope_factor = 1.0;   // ... but a factor of 1 interpolates nothing
  EXPECT_EQ(mla::ref::rope_frequencies(c), plain);

  // DeepSeek-V3's defaults with dr = 16: corr(32) = 16 ln(4096 / 64 pi) / (2 ln 1e4) = 2.618,
  // corr(1) = 16 ln(4096 / 2 pi) / (2 ln 1e4) = 5.628, so low = 2 and high = 6 and the ramp over
  // i = 0..7 is 0, 0, 0, 1/4, 1/2, 3/4, 1, 1.
  c.rope_factor = 40.0;
  auto corr = [](double n) { return 16.0 * std::log(4096.0 / (n * 2.0 * std::numbers::pi)) / (2.0 * std::log(1e4)); };
  EXPECT_NEAR(corr(32.0), 2.6180602025795063, 1e-12);
  EXPECT_NEAR(corr(1.0), 5.628360159219318, 1e-12);
  const double ramp[8] = {0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0};
  const std::vector<double> yarn = mla::ref::rope_frequencies(c);
  for (int64_t i = 0; i < 8; ++i)
    EXPECT_NEAR(yarn[i], plain[i] / 40.0 * ramp[i] + plain[i] * (1.0 - ramp[i]), 1e-15 * plain[i]) << "i " << i;

  // low == high: dr = 8, original_seq_len 4: corr(32) = -1.70 -> low 0, corr(1) = -0.196 -> high 0,
  // so high becomes 0.001 and the ramp is 0, 1, 1, 1.
  RefConfig tiny;
  tiny.qk_rope_head_dim = 8;
  tiny.original_seq_len = 4;
  tiny.max_seq_len = 8;
  tiny.rope_factor = 40.0;
  const std::vector<double> t = mla::ref::rope_frequencies(tiny);
  EXPECT_DOUBLE_EQ(t[0], 1.0);
  for (int64_t i = 1; i < 4; ++i) EXPECT_DOUBLE_EQ(t[i], std::pow(10000.0, -static_cast<double>(i) / 4.0) / 40.0);
}

TEST(Reference, SoftmaxScale) {
  RefConfig c;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.max_seq_len = 4096;
  EXPECT_DOUBLE_EQ(mla::ref::softmax_scale(c), 1.0 / std::sqrt(192.0));
  // YaRN on: mscale' = 0.1 * 1.0 * ln(40) + 1 = 1.36889; 192^-0.5 * 1.36889^2 = 0.135234.
  c.max_seq_len = 8192;
  EXPECT_NEAR(mla::ref::softmax_scale(c), 0.1352337788608801, 1e-15);
  c.mscale = 0.707;
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(mla::ref::softmax_scale(c), m * m / std::sqrt(192.0));
}

TEST(Reference, Fp8E4m3Values) {
  using mla::ref::fp8_e4m3_value;
  EXPECT_EQ(fp8_e4m3_value(0x00), 0.0);
  EXPECT_EQ(fp8_e4m3_value(0x38), 1.0);
  EXPECT_EQ(fp8_e4m3_value(0x7e), 448.0);
  EXPECT_EQ(fp8_e4m3_value(0x01), std::ldexp(1.0, -9));
  EXPECT_EQ(fp8_e4m3_value(0x08), std::ldexp(1.0, -6));  // smallest normal
  EXPECT_EQ(fp8_e4m3_value(0x80), 0.0);
  EXPECT_TRUE(std::signbit(fp8_e4m3_value(0x80)));
  EXPECT_EQ(fp8_e4m3_value(0xb8), -1.0);
  EXPECT_EQ(fp8_e4m3_value(0x3c), 1.5);
  EXPECT_EQ(fp8_e4m3_value(0xfe), -448.0);
  EXPECT_TRUE(std::isnan(fp8_e4m3_value(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_value(0xff)));
  // Non-negative codes 0x00..0x7e are finite and strictly increasing.
  for (int code = 1; code < 0x7f; ++code)
    EXPECT_LT(fp8_e4m3_value(static_cast<uint8_t>(code - 1)), fp8_e4m3_value(static_cast<uint8_t>(code)));
}

TEST(Reference, Fp8DequantUsesBlockScales) {
  const int64_t rows = 130, cols = 129;
  const std::vector<uint8_t> codes(rows * cols, 0x38);        // every value 1.0
  const std::vector<float> scale = {2.0f, 3.0f, 5.0f, 7.0f};  // [2, 2]
  const std::vector<double> w = mla::ref::fp8_dequant(codes, rows, cols, scale);
  EXPECT_EQ(w[0 * cols + 0], 2.0);
  EXPECT_EQ(w[127 * cols + 127], 2.0);
  EXPECT_EQ(w[127 * cols + 128], 3.0);
  EXPECT_EQ(w[128 * cols + 127], 5.0);
  EXPECT_EQ(w[129 * cols + 128], 7.0);
}

TEST(Reference, RmsnormKnownValues) {
  // Exact with eps = 0: rms([2, -2, 2, -2]) = 2.
  const std::vector<double> y0 =
      mla::ref::rmsnorm({2.0, -2.0, 2.0, -2.0, 3.0, 4.0, 0.0, 0.0}, 2, {1.0, 0.5, 2.0, 4.0}, 0.0);
  const std::vector<double> expected0 = {1.0, -0.5, 2.0, -4.0, 1.2, 0.8, 0.0, 0.0};  // rms([3,4,0,0]) = 2.5
  for (size_t i = 0; i < expected0.size(); ++i) EXPECT_DOUBLE_EQ(y0[i], expected0[i]) << "i " << i;
  // Default eps 1e-6: [1, 2, 3, 4] has mean square 7.5.
  const std::vector<double> y1 = mla::ref::rmsnorm({1.0, 2.0, 3.0, 4.0}, 1, {1.0, 1.0, 1.0, 1.0});
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_DOUBLE_EQ(y1[i], static_cast<double>(i + 1) / std::sqrt(7.5 + 1e-6)) << "i " << i;
}

TEST(Reference, RelativeL2) {
  const std::vector<double> want = {3.0, 4.0};
  const float same[2] = {3.0f, 4.0f}, off[2] = {3.0f, 4.5f}, zero[2] = {0.0f, 0.0f};
  EXPECT_EQ(mla::ref::relative_l2(same, want), 0.0);
  EXPECT_DOUBLE_EQ(mla::ref::relative_l2(off, want), 0.1);
  EXPECT_EQ(mla::ref::relative_l2(zero, {0.0, 0.0}), 0.0);
  EXPECT_EQ(mla::ref::relative_l2(same, {0.0, 0.0}), kInf);
}

}  // namespace
