// Attention over keys split across ranks (docs/design.md, The latent cache split across ranks),
// in one process: each shard's partial attention by the fast and the standard kernels (the shard's
// rows only, its causal rule, its log-sum-exp), merged by attention_merge, against a float64
// softmax over all the keys; the merge's edge cases; the sharded cache's pages.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_merge.h"
#include "runtime/layer/latent_cache.h"
#include "tests/ops/test_data.h"

namespace mla::test {
namespace {

// One sequence: `seq` queries at positions start_pos .. start_pos + seq - 1 over keys 0 ..
// start_pos + seq - 1, `heads` heads. shared: every head reads the same keys (absorb's layout),
// else each head its own (naive's).
struct SplitCase {
  int64_t heads = 3, seq = 5, start_pos = 6, score_dim = 24, value_dim = 16;
  bool shared = true;
  int64_t kv_len() const { return start_pos + seq; }
  int64_t key_heads() const { return shared ? 1 : heads; }
};

struct SplitData {
  std::vector<float> q, keys, values;  // keys [key_heads, kv_len, score_dim], values likewise
};

SplitData split_data(const SplitCase& c, uint32_t seed) {
  return {random_floats(c.seq * c.heads * c.score_dim, seed),
          random_floats(c.key_heads() * c.kv_len() * c.score_dim, seed + 1),
          random_floats(c.key_heads() * c.kv_len() * c.value_dim, seed + 2)};
}

// Softmax attention in float64 over every key the causal rule lets each query see: [seq, heads, value_dim].
std::vector<double> whole_attention(const SplitCase& c, const SplitData& d, double scale) {
  std::vector<double> out(static_cast<size_t>(c.seq * c.heads * c.value_dim), 0.0);
  for (int64_t s = 0; s < c.seq; ++s) {
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t kh = c.shared ? 0 : h;
      const int64_t visible = c.start_pos + s + 1;
      std::vector<double> score(static_cast<size_t>(visible));
      double max_score = -INFINITY;
      for (int64_t t = 0; t < visible; ++t) {
        double dot = 0.0;
        for (int64_t i = 0; i < c.score_dim; ++i) {
          dot += double{d.q[(s * c.heads + h) * c.score_dim + i]} * d.keys[(kh * c.kv_len() + t) * c.score_dim + i];
        }
        score[t] = dot * scale;
        max_score = std::max(max_score, score[t]);
      }
      double sum = 0.0;
      for (double& value : score) sum += (value = std::exp(value - max_score));
      for (int64_t t = 0; t < visible; ++t) {
        for (int64_t i = 0; i < c.value_dim; ++i) {
          out[(s * c.heads + h) * c.value_dim + i] +=
              score[t] / sum * d.values[(kh * c.kv_len() + t) * c.value_dim + i];
        }
      }
    }
  }
  return out;
}

// Shard r of `shards`: positions t % shards == r, at row t / shards, head-major as the whole.
std::vector<float> shard_of(const std::vector<float>& whole, int64_t key_heads, int64_t kv_len, int64_t width,
                            int64_t shards, int64_t shard) {
  std::vector<float> part;
  for (int64_t h = 0; h < key_heads; ++h) {
    for (int64_t t = shard; t < kv_len; t += shards) {
      const float* row = whole.data() + (h * kv_len + t) * width;
      part.insert(part.end(), row, row + width);
    }
  }
  return part;
}

// Every shard's partial attention by the kernel, then the merge: [seq, heads, value_dim].
std::vector<float> split_attention(const SplitCase& c, const SplitData& d, int64_t shards, bool fast, float scale) {
  const int64_t rows = c.seq * c.heads;
  std::vector<float> out(static_cast<size_t>(shards * rows * c.value_dim), std::nanf(""));
  std::vector<float> lse(static_cast<size_t>(shards * rows), std::nanf(""));
  for (int64_t shard = 0; shard < shards; ++shard) {
    const int64_t local_len = shard_rows(c.kv_len(), shards, shard);
    const std::vector<float> keys = shard_of(d.keys, c.key_heads(), c.kv_len(), c.score_dim, shards, shard);
    const std::vector<float> values = shard_of(d.values, c.key_heads(), c.kv_len(), c.value_dim, shards, shard);
    AttentionParams p;
    p.q = d.q.data();
    p.q_token_stride = c.heads * c.score_dim;
    p.q_head_stride = c.score_dim;
    p.keys = keys.data();
    p.key_batch_stride = c.key_heads() * local_len * c.score_dim;
    p.key_pos_stride = c.score_dim;
    p.key_head_stride = c.shared ? 0 : local_len * c.score_dim;
    p.values = values.data();
    p.value_batch_stride = c.key_heads() * local_len * c.value_dim;
    p.value_pos_stride = c.value_dim;
    p.value_head_stride = c.shared ? 0 : local_len * c.value_dim;
    p.out = out.data() + shard * rows * c.value_dim;
    p.out_token_stride = c.heads * c.value_dim;
    p.out_head_stride = c.value_dim;
    p.batch = 1;
    p.seq = c.seq;
    p.n_heads = c.heads;
    p.start_pos = c.start_pos;
    p.kv_len = local_len;
    p.score_dim = c.score_dim;
    p.value_dim = c.value_dim;
    p.scale = scale;
    p.kv_shards = shards;
    p.kv_shard = shard;
    p.lse = lse.data() + shard * rows;
    if (fast) {
      attention_fast(p);
    } else {
      attention_standard(p, 2);  // query chunks of two tokens
    }
  }
  std::vector<float> merged(static_cast<size_t>(rows * c.value_dim));
  attention_merge({out.data(), lse.data(), shards, rows, c.value_dim, merged.data()});
  return merged;
}

double relative_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(diff / norm);
}

// Shards of 2, 3 and 4 (the first query at position 0 on a shard that holds no row yet when
// start_pos is 0; lengths not multiples of the shards), shared and per-head keys, both kernels.
TEST(ContextParallelAttention, MergedShardsEqualTheWholeSoftmax) {
  const float scale = 0.2f;
  for (const int64_t start_pos : {int64_t{0}, int64_t{6}}) {
    for (const bool shared : {true, false}) {
      SplitCase c;
      c.start_pos = start_pos;
      c.shared = shared;
      const SplitData d = split_data(c, 7);
      const std::vector<double> want = whole_attention(c, d, scale);
      for (const int64_t shards : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}}) {
        for (const bool fast : {true, false}) {
          const std::string name = "start " + std::to_string(start_pos) + (shared ? " shared" : " per-head") +
                                   " shards " + std::to_string(shards) + (fast ? " fast" : " standard");
          EXPECT_LE(relative_l2(split_attention(c, d, shards, fast, scale), want), 1e-6) << name;
        }
      }
    }
  }
}

// A row that sees no key of a part takes nothing from it, whatever that part's output holds; a
// row no part sees is 0; the merged log-sum-exp is the whole one.
TEST(ContextParallelAttention, MergeIgnoresPartsARowDoesNotSee) {
  const float inf = std::numeric_limits<float>::infinity();
  // Two rows of 2 values over 3 parts.
  const std::vector<float> out = {1, 2, std::nanf(""), inf, 3, 4, 0, 0, 5, 6, inf, 1};
  const std::vector<float> lse = {0.0f, -inf, std::log(3.0f), -inf, -inf, -inf};
  std::vector<float> merged(4), merged_lse(2);
  attention_merge({out.data(), lse.data(), 3, 2, 2, merged.data(), merged_lse.data()});
  // Row 0: parts 0 and 1 with weights 1 and 3 (the last part unseen): (1*[1,2] + 3*[3,4]) / 4.
  EXPECT_FLOAT_EQ(merged[0], 2.5f);
  EXPECT_FLOAT_EQ(merged[1], 3.5f);
  EXPECT_FLOAT_EQ(merged_lse[0], std::log(4.0f));
  EXPECT_EQ(merged[2], 0.0f);  // row 1: no part sees a key
  EXPECT_EQ(merged[3], 0.0f);
  EXPECT_EQ(merged_lse[1], -inf);

  // The same parts three rows apart (part_rows), the row between them NaN: the same result.
  std::vector<float> spaced_out, spaced_lse;
  for (int part = 0; part < 3; ++part) {
    spaced_out.insert(spaced_out.end(), out.begin() + part * 4, out.begin() + part * 4 + 4);
    spaced_out.insert(spaced_out.end(), {std::nanf(""), std::nanf("")});
    spaced_lse.insert(spaced_lse.end(), {lse[part * 2], lse[part * 2 + 1], std::nanf("")});
  }
  std::vector<float> spaced(4), spaced_merged_lse(2);
  attention_merge({spaced_out.data(), spaced_lse.data(), 3, 2, 2, spaced.data(), spaced_merged_lse.data(), false, 3});
  EXPECT_EQ(spaced, merged);
  EXPECT_EQ(spaced_merged_lse, merged_lse);
}

}  // namespace
}  // namespace mla::test
