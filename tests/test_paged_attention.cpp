// The attention kernels on ragged steps and paged caches (kernels/cpu/attention.h): a ragged step
// equals each of its sequences run alone as a uniform batch of one, and reading the latent rows
// through shuffled block tables (pages of 5 and 64 rows, fp32, bf16 and fp8 rows) equals reading
// the same rows, dequantized, from a dense cache. Both paths, fp32 and bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/paged_latent.h"
#include "tests/ops/op_table.h"
#include "tests/ops/test_data.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

constexpr int64_t kLatent = 61, kRope = 16, kWidth = kLatent + kRope, kHeads = 3;
const std::vector<int64_t> kStart = {0, 7, 20, 3};
const std::vector<int64_t> kNewTokens = {5, 1, 3, 0};  // the last sequence is idle

struct RaggedAttention {
  std::vector<int64_t> offsets;
  std::vector<float> q, dense_rows, out;  // dense_rows: [sequence, capacity, C + dr]
  int64_t capacity = 0;
  AttentionParams params;
};

// A ragged absorb step over a dense cache [4, capacity, C + dr].
RaggedAttention ragged_attention(bool bf16) {
  RaggedAttention a;
  int64_t tokens = 0;
  for (const int64_t count : kNewTokens) {
    a.offsets.push_back(tokens);
    tokens += count;
  }
  a.capacity = 32;
  a.q = random_floats(tokens * kHeads * kWidth, 3);
  a.dense_rows = random_floats(static_cast<int64_t>(kStart.size()) * a.capacity * kWidth, 4);
  if (bf16) {
    round_to_bf16_inplace(a.q.data(), static_cast<int64_t>(a.q.size()));
    round_to_bf16_inplace(a.dense_rows.data(), static_cast<int64_t>(a.dense_rows.size()));
  }
  a.out.assign(static_cast<size_t>(tokens * kHeads * kLatent), 0.0f);
  AttentionParams& p = a.params;
  p.batch = static_cast<int64_t>(kStart.size());
  p.n_heads = kHeads;
  for (size_t b = 0; b < kStart.size(); ++b) {
    p.seq = std::max(p.seq, kNewTokens[b]);
    p.kv_len = std::max(p.kv_len, kStart[b] + kNewTokens[b]);
  }
  p.seq_start_pos = kStart.data();
  p.seq_new_tokens = kNewTokens.data();
  p.seq_token_offset = a.offsets.data();
  p.q = a.q.data();
  p.q_token_stride = kHeads * kWidth;
  p.q_head_stride = kWidth;
  p.keys = p.values = a.dense_rows.data();
  p.key_batch_stride = p.value_batch_stride = a.capacity * kWidth;
  p.key_pos_stride = p.value_pos_stride = kWidth;
  p.score_dim = kWidth;
  p.score_split = kLatent;
  p.value_dim = kLatent;
  p.scale = 0.2f;
  p.out = a.out.data();
  p.out_token_stride = kHeads * kLatent;
  p.out_head_stride = kLatent;
  p.round_to_bf16 = bf16;
  return a;
}

void run(const AttentionParams& p, bool standard) {
  if (standard) {
    attention_standard(p, 2);
  } else {
    attention_fast(p);
  }
}

TEST(RaggedAttentionKernel, EachSequenceEqualsItselfAlone) {
  for (const bool bf16 : {false, true}) {
    for (const bool standard : {false, true}) {
      RaggedAttention a = ragged_attention(bf16);
      run(a.params, standard);
      for (size_t b = 0; b < kStart.size(); ++b) {
        if (kNewTokens[b] == 0) continue;
        AttentionParams alone = a.params;
        alone.seq_start_pos = alone.seq_new_tokens = alone.seq_token_offset = nullptr;
        alone.batch = 1;
        alone.seq = kNewTokens[b];
        alone.start_pos = kStart[b];
        alone.kv_len = kStart[b] + kNewTokens[b];
        alone.q = a.q.data() + a.offsets[b] * alone.q_token_stride;
        alone.keys = alone.values = a.dense_rows.data() + static_cast<int64_t>(b) * a.capacity * kWidth;
        std::vector<float> out(static_cast<size_t>(kNewTokens[b] * kHeads * kLatent), 0.0f);
        alone.out = out.data();
        run(alone, standard);
        const float* got = a.out.data() + a.offsets[b] * kHeads * kLatent;
        EXPECT_TRUE(std::equal(out.begin(), out.end(), got))
            << "sequence " << b << (standard ? " standard" : " fast") << (bf16 ? " bf16" : " fp32");
      }
    }
  }
}

TEST(PagedAttentionKernel, ShuffledPagesEqualTheDenseRows) {
  for (const LatentDType dtype : {LatentDType::F32, LatentDType::BF16, LatentDType::FP8}) {
    for (const int64_t page_size : {int64_t{5}, int64_t{64}}) {
      for (const bool standard : {false, true}) {
        RaggedAttention a = ragged_attention(false);
        const int64_t sequences = static_cast<int64_t>(kStart.size());
        const int64_t pages_per_sequence = (a.capacity + page_size - 1) / page_size;
        std::vector<int32_t> table(static_cast<size_t>(sequences * pages_per_sequence));
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), std::mt19937(7));
        std::vector<uint8_t> pool(table.size() *
                                  static_cast<size_t>(page_size * latent_row_bytes(dtype, kLatent, kRope)));
        PagedLatentView view{pool.data(), dtype, kLatent, kRope, page_size, table.data(), pages_per_sequence};
        std::vector<int64_t> sequence, position;
        for (int64_t b = 0; b < sequences; ++b) {
          for (int64_t t = 0; t < a.capacity; ++t) sequence.push_back(b), position.push_back(t);
        }
        paged_latent_append({a.dense_rows.data(), kWidth, static_cast<int64_t>(sequence.size()), sequence.data(),
                             position.data(), view});
        // The dense cache holds what the pages hold: the rows as their dtype stores them.
        for (int64_t b = 0; b < sequences; ++b) {
          for (int64_t t = 0; t < a.capacity; ++t) {
            float* row = a.dense_rows.data() + (b * a.capacity + t) * kWidth;
            const float* stored = paged_latent_rows(view, b, t / page_size, t % page_size, 1, row);
            std::copy(stored, stored + kWidth, row);
          }
        }
        run(a.params, standard);
        const std::vector<float> dense_out = a.out;
        std::fill(a.out.begin(), a.out.end(), 0.0f);
        AttentionParams paged = a.params;
        paged.keys = paged.values = nullptr;
        paged.latent_pages = &view;
        run(paged, standard);
        const std::string what = std::string(dtype == LatentDType::F32    ? "fp32"
                                             : dtype == LatentDType::BF16 ? "bf16"
                                                                          : "fp8") +
                                 " pages of " + std::to_string(page_size) + (standard ? ", standard" : ", fast");
        EXPECT_LE(relative_l2(a.out, to_double(dense_out)), 1e-6) << what;
      }
    }
  }
}

// The op table's paged_latent rows (their CUDA twin runs in mla_gpu_tests): on the CPU, each row
// read back is the appended row as its dtype stores it (the fp8 rule as the reference computes it),
// taken by index where the case says so.
TEST(PagedLatentOp, TheCpuTwinStoresEachRowByItsRule) {
  int rows_checked = 0;
  for (const OpCase& op : op_table()) {
    if (op.op != "paged_latent") continue;
    const OpRun run = op.run(OpBackend::CpuPortable, 1);
    const std::string by_index = " rows by index";
    const bool indexed = op.shape.ends_with(by_index);
    const std::string shape = indexed ? op.shape.substr(0, op.shape.size() - by_index.size()) : op.shape;
    const bool fp8 = shape.ends_with("fp8"), bf16 = shape.ends_with("bf16");
    const int64_t latent = op.shape.starts_with("C 512") ? 512 : 200;
    const int64_t rope = latent == 512 ? 64 : 6;
    const PagedLatentInputs in =
        paged_latent_inputs({fp8    ? LatentDType::FP8
                             : bf16 ? LatentDType::BF16
                                    : LatentDType::F32,
                             latent, rope, latent == 512 ? 64 : 5,
                             latent == 512 ? std::vector<int64_t>{70, 1, 130} : std::vector<int64_t>{9, 12}, indexed});
    const int64_t width = latent + rope;
    for (size_t token = 0; token < in.sequence.size(); ++token) {
      const int64_t source = indexed ? in.row_index[token] : static_cast<int64_t>(token);  // the row it stores
      const float* row = in.rows.data() + source * width;
      const float* got = run.output.data() + token * static_cast<size_t>(width);
      const std::vector<double> row_double(row, row + latent);
      const std::vector<double> want_fp8 = fp8 ? ref::fp8_latent_row(row_double.data(), latent) : std::vector<double>{};
      for (int64_t i = 0; i < width; ++i) {
        double want = row[i];
        if (bf16 || (fp8 && i >= latent)) want = ref::round_to_bf16(row[i]);
        if (fp8 && i < latent) want = want_fp8[static_cast<size_t>(i)];
        ASSERT_NEAR(got[i], want, 1e-6 * std::abs(want)) << op.shape << ", token " << token << ", value " << i;
      }
      ++rows_checked;
    }
  }
  EXPECT_EQ(rows_checked, 3 * (201 + 21 + 21));
}

}  // namespace
}  // namespace mla::test
