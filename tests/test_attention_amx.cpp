// The bf16 prefill attention on AMX tiles against the fast path's fp32 loops (the same
// arithmetic in a different order), on shapes that leave every tile partly empty. Skipped on a
// CPU without AMX.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_fast_amx.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/cpu_features.h"

namespace mla {
namespace {

struct AmxCase {
  int64_t batch, heads, seq, start_pos, score_dim, value_dim;
  bool explicit_mask;
};

std::vector<float> bf16_values(size_t count, uint64_t seed, float amplitude) {
  std::mt19937_64 generator(seed);
  std::uniform_real_distribution<float> uniform(-amplitude, amplitude);
  std::vector<float> values(count);
  for (float& value : values) value = round_to_bf16(uniform(generator));
  return values;
}

std::vector<uint16_t> to_bits(const std::vector<float>& bf16_numbers) {
  std::vector<uint16_t> bits(bf16_numbers.size());
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = f32_to_bf16_bits(bf16_numbers[i]);
  return bits;
}

// Head-major keys and values [B, H, kv, d] as the CPU layer lays them out, q and out token-major
// with a gap between heads that no kernel may write.
struct AmxProblem {
  AttentionParams params;
  std::vector<float> q, keys, values, mask, out;
  static constexpr float kGap = 12345.0f;

  explicit AmxProblem(const AmxCase& c) {
    const int64_t kv_len = c.start_pos + c.seq;
    q = bf16_values(static_cast<size_t>(c.batch * c.seq * c.heads * c.score_dim), 1, 1.0f);
    keys = bf16_values(static_cast<size_t>(c.batch * c.heads * kv_len * c.score_dim), 2, 1.0f);
    values = bf16_values(static_cast<size_t>(c.batch * c.heads * kv_len * c.value_dim), 3, 1.0f);
    const int64_t out_head_stride = c.value_dim + 3;
    out.assign(static_cast<size_t>(c.batch * c.seq * c.heads * out_head_stride), kGap);
    AttentionParams& p = params;
    p.q = q.data();
    p.q_token_stride = c.heads * c.score_dim;
    p.q_head_stride = c.score_dim;
    p.keys = keys.data();
    p.key_batch_stride = c.heads * kv_len * c.score_dim;
    p.key_pos_stride = c.score_dim;
    p.key_head_stride = kv_len * c.score_dim;
    p.values = values.data();
    p.value_batch_stride = c.heads * kv_len * c.value_dim;
    p.value_pos_stride = c.value_dim;
    p.value_head_stride = kv_len * c.value_dim;
    p.out = out.data();
    p.out_token_stride = c.heads * out_head_stride;
    p.out_head_stride = out_head_stride;
    p.batch = c.batch;
    p.seq = c.seq;
    p.n_heads = c.heads;
    p.start_pos = c.start_pos;
    p.kv_len = kv_len;
    p.score_dim = c.score_dim;
    p.value_dim = c.value_dim;
    p.scale = round_to_bf16(1.0f / std::sqrt(static_cast<float>(c.score_dim)));
    p.round_to_bf16 = true;
    if (c.explicit_mask) {
      // Every third position hidden from every row, and the last row sees one position only.
      mask.assign(static_cast<size_t>(c.seq * kv_len), 0.0f);
      for (int64_t s = 0; s < c.seq; ++s) {
        for (int64_t t = 0; t < kv_len; ++t) {
          const bool hidden = s == c.seq - 1 ? t != 0 : t % 3 == 2;
          if (hidden) mask[static_cast<size_t>(s * kv_len + t)] = -INFINITY;
        }
      }
      p.mask = mask.data();
      p.mask_stride = kv_len;
    }
  }
};

// Over the outputs only (the gaps between heads hold kGap in both).
double relative_l2(const std::vector<float>& got, const std::vector<float>& want, int64_t head_stride,
                   int64_t value_dim) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (static_cast<int64_t>(i) % head_stride >= value_dim) continue;
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

std::string describe(const AmxCase& c) {
  return "b" + std::to_string(c.batch) + "_h" + std::to_string(c.heads) + "_s" + std::to_string(c.seq) + "_p" +
         std::to_string(c.start_pos) + "_dq" + std::to_string(c.score_dim) + "_dv" + std::to_string(c.value_dim) +
         (c.explicit_mask ? "_mask" : "");
}

// gtest prints a parameter in a failure's message; without this it dumps the struct's bytes.
void PrintTo(const AmxCase& c, std::ostream* out) { *out << describe(c); }

class AttentionAmx : public testing::TestWithParam<AmxCase> {};

TEST_P(AttentionAmx, MatchesTheFp32LoopsWithinBf16Rounding) {
  if (cpu_isa() != CpuIsa::Amx) GTEST_SKIP() << "this CPU (level " << cpu_isa_name(cpu_isa()) << ") has no AMX";
  const AmxCase& c = GetParam();
  AmxProblem amx(c);
  ASSERT_TRUE(attention_fast_amx_applies(amx.params)) << "the OS refused the tile registers";
  attention_fast(amx.params);

  AmxProblem loops(c);
  set_cpu_isa_limit(CpuIsa::Avx512Bf16);
  const bool loops_applies = attention_fast_amx_applies(loops.params);
  attention_fast(loops.params);
  set_cpu_isa_limit(CpuIsa::Amx);
  ASSERT_FALSE(loops_applies);

  for (size_t i = 0; i < amx.out.size(); ++i) {
    const bool gap = static_cast<int64_t>(i) % amx.params.out_head_stride >= c.value_dim;
    if (gap) {
      ASSERT_EQ(amx.out[i], AmxProblem::kGap) << "written between heads at " << i;
    } else {
      ASSERT_TRUE(std::isfinite(amx.out[i])) << "at " << i;
      ASSERT_EQ(amx.out[i], round_to_bf16(amx.out[i])) << "not a bf16 value at " << i;
    }
  }
  // The two orders of summation may round a score to neighbouring bf16 values (a relative step
  // of 2^-8), which moves a probability by as much; outputs agree to about that.
  EXPECT_LE(relative_l2(amx.out, loops.out, amx.params.out_head_stride, c.value_dim), 6e-3);
  EXPECT_EQ(attention_fast_workspace_bytes(amx.params, 2), attention_fast_amx_workspace_bytes(amx.params, 2));

  // The operands handed over as bf16 numbers, as the CPU layer hands them: the keys and values (its
  // expansion's), then q and the output too (its GEMMs'). Only where the kernel reads and writes
  // changes: the same bits out, and the gaps between heads untouched.
  for (const bool q_and_out : {false, true}) {
    AmxProblem bits(c);
    const std::vector<uint16_t> key_bf16 = to_bits(bits.keys), value_bf16 = to_bits(bits.values);
    const std::vector<uint16_t> q_bf16 = to_bits(bits.q);
    std::vector<uint16_t> out_bf16(bits.out.size(), 0xBEEF);
    bits.params.keys = nullptr;
    bits.params.values = nullptr;
    bits.params.key_bf16 = key_bf16.data();
    bits.params.value_bf16 = value_bf16.data();
    if (q_and_out) {
      bits.params.q = nullptr;
      bits.params.out = nullptr;
      bits.params.q_bf16 = q_bf16.data();
      bits.params.out_bf16 = out_bf16.data();
    }
    ASSERT_TRUE(attention_fast_amx_applies(bits.params));
    attention_fast(bits.params);
    for (size_t i = 0; i < amx.out.size(); ++i) {
      if (!q_and_out) {
        ASSERT_EQ(bits.out[i], amx.out[i]) << "at " << i;
        continue;
      }
      const bool gap = static_cast<int64_t>(i) % amx.params.out_head_stride >= c.value_dim;
      ASSERT_EQ(out_bf16[i], gap ? uint16_t{0xBEEF} : f32_to_bf16_bits(amx.out[i])) << "q and out as bits, at " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionAmx,
                         testing::Values(AmxCase{2, 3, 37, 0, 48, 40, false},     // partial tiles everywhere
                                         AmxCase{1, 2, 16, 45, 192, 128, false},  // chunked prefill: p > 0
                                         AmxCase{2, 2, 130, 0, 192, 128, false},  // DeepSeek's head dims
                                         AmxCase{1, 2, 33, 7, 72, 24, true}),     // an explicit mask with -inf
                         [](const testing::TestParamInfo<AmxCase>& shape) { return describe(shape.param); });

TEST(AttentionAmx, FewRowsPerHeadOrSharedKeysStayOnTheLoops) {
  AmxProblem few(AmxCase{1, 2, kAmxMinQueryRows - 1, 0, 48, 40, false});
  EXPECT_FALSE(attention_fast_amx_applies(few.params));
  AmxProblem shared(AmxCase{1, 2, 32, 0, 48, 40, false});
  shared.params.key_head_stride = 0;
  shared.params.value_head_stride = 0;
  EXPECT_FALSE(attention_fast_amx_applies(shared.params));
  AmxProblem fp32(AmxCase{1, 2, 32, 0, 48, 40, false});
  fp32.params.round_to_bf16 = false;
  EXPECT_FALSE(attention_fast_amx_applies(fp32.params));
}

// Only the AMX kernel reads bf16 keys and values: a step that would reach the fp32 loops or the
// standard path with them is refused, not computed from null or stale fp32 buffers.
TEST(AttentionAmx, BitsAreRefusedWhereTheAmxPathDoesNotApply) {
  AmxProblem problem(AmxCase{1, 2, 32, 0, 48, 40, false});
  const std::vector<uint16_t> key_bf16 = to_bits(problem.keys), value_bf16 = to_bits(problem.values);
  problem.params.key_bf16 = key_bf16.data();
  problem.params.value_bf16 = value_bf16.data();
  problem.params.round_to_bf16 = false;  // fp32: never the AMX path
  EXPECT_THROW(attention_fast(problem.params), std::invalid_argument);
  EXPECT_THROW(attention_standard(problem.params, 8), std::invalid_argument);
  problem.params.round_to_bf16 = true;
  EXPECT_THROW(attention_standard(problem.params, 8), std::invalid_argument);

  // q given or out asked for as bf16 numbers: the same.
  for (const bool q_as_bf16 : {true, false}) {
    AmxProblem one(AmxCase{1, 2, 32, 0, 48, 40, false});
    const std::vector<uint16_t> q_bf16 = to_bits(one.q);
    std::vector<uint16_t> out_bf16(one.out.size());
    if (q_as_bf16) {
      one.params.q_bf16 = q_bf16.data();
    } else {
      one.params.out_bf16 = out_bf16.data();
    }
    EXPECT_THROW(attention_standard(one.params, 8), std::invalid_argument);
    one.params.round_to_bf16 = false;
    EXPECT_THROW(attention_fast(one.params), std::invalid_argument);
  }
}

}  // namespace
}  // namespace mla
