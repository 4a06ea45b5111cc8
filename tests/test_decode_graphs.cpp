// Which decode steps the CUDA layer replays from a captured graph (runtime/layer/decode_graphs.h):
// the kv_len buckets its split is sized for, and the cache's policy (a shape's first step without
// a graph, its second captured, later ones replayed; the least recently used graph dropped).
#include <gtest/gtest.h>

#include <string>

#include "runtime/base/errors.h"
#include "runtime/io/config.h"
#include "runtime/layer/decode_graphs.h"

namespace mla::test {
namespace {

TEST(DecodeGraphs, KvBucketsHoldTheLengthAndStepFourTimesPerDoubling) {
  EXPECT_EQ(decode_kv_bucket(0), 64);
  EXPECT_EQ(decode_kv_bucket(1), 64);
  EXPECT_EQ(decode_kv_bucket(64), 64);
  EXPECT_EQ(decode_kv_bucket(65), 80);
  EXPECT_EQ(decode_kv_bucket(112), 112);
  EXPECT_EQ(decode_kv_bucket(113), 128);
  EXPECT_EQ(decode_kv_bucket(1100), 1280);
  EXPECT_EQ(decode_kv_bucket(32768), 32768);
  int64_t previous = decode_kv_bucket(1);
  int64_t changes = 0;
  for (int64_t kv_len = 1; kv_len <= (int64_t{1} << 20); ++kv_len) {
    const int64_t bucket = decode_kv_bucket(kv_len);
    ASSERT_GE(bucket, kv_len);
    ASSERT_GE(bucket, previous) << "at kv_len " << kv_len;
    ASSERT_EQ(bucket % 16, 0) << "at kv_len " << kv_len;
    // At least 4/7 of a bucket's keys exist, so at least 4/7 of the split's blocks have keys to read.
    if (kv_len > 64) {
      ASSERT_GE(7 * kv_len, 4 * bucket) << "at kv_len " << kv_len;
    }
    changes += bucket != previous;
    previous = bucket;
  }
  EXPECT_EQ(changes, 4 * 14);  // 64 .. 2^20: 14 doublings
}

DecodeGraphKey key(int64_t sequences, int64_t kv_bucket) {
  DecodeGraphKey k;
  k.sequences = sequences;
  k.tokens = sequences;
  k.max_new_tokens = 1;
  k.kv_bucket = kv_bucket;
  return k;
}

TEST(DecodeGraphs, AShapeRunsOnceWithoutAGraphThenIsCapturedThenReplays) {
  DecodeGraphCache<std::string> cache(4);
  EXPECT_EQ(cache.action(key(8, 64)), DecodeGraphAction::Eager);
  EXPECT_EQ(cache.action(key(8, 80)), DecodeGraphAction::Eager);  // another bucket: another shape
  EXPECT_EQ(cache.action(key(8, 64)), DecodeGraphAction::Capture);
  cache.insert(key(8, 64), "graph 8/64");
  EXPECT_EQ(cache.action(key(8, 64)), DecodeGraphAction::Replay);
  EXPECT_EQ(cache.graph(key(8, 64)), "graph 8/64");
  DecodeGraphKey other_output = key(8, 64);
  int y = 0;
  other_output.y = &y;  // a step writing elsewhere cannot replay a graph that writes y_partial
  EXPECT_EQ(cache.action(other_output), DecodeGraphAction::Eager);
  DecodeGraphKey timed = key(8, 64);
  timed.timed = true;
  EXPECT_EQ(cache.action(timed), DecodeGraphAction::Eager);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.captured(), 1);
}

TEST(DecodeGraphs, TheLeastRecentlyUsedGraphGoesWhenTheCacheIsFull) {
  DecodeGraphCache<int> cache(2);
  for (int64_t sequences : {1, 2, 3}) {
    ASSERT_EQ(cache.action(key(sequences, 64)), DecodeGraphAction::Eager);
    ASSERT_EQ(cache.action(key(sequences, 64)), DecodeGraphAction::Capture);
    cache.insert(key(sequences, 64), static_cast<int>(sequences));
    if (sequences == 2) {
      ASSERT_EQ(cache.action(key(1, 64)), DecodeGraphAction::Replay);  // 1 used after 2
    }
  }
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.action(key(1, 64)), DecodeGraphAction::Replay);
  EXPECT_EQ(cache.action(key(3, 64)), DecodeGraphAction::Replay);
  EXPECT_EQ(cache.action(key(2, 64)), DecodeGraphAction::Eager);  // dropped: seen afresh
  EXPECT_EQ(cache.captured(), 3);
  cache.clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.action(key(1, 64)), DecodeGraphAction::Eager);
}

TEST(DecodeGraphs, RunCudaGraphsIsOnUnlessSetAndRefusesANonBoolean) {
  const std::string text =
      "model: {dim: 48, n_heads: 3, q_lora_rank: 16, kv_lora_rank: 24, qk_nope_head_dim: 8,\n"
      "        qk_rope_head_dim: 4, v_head_dim: 8, max_batch_size: 2, max_seq_len: 32}\n"
      "weights: {format: random, dtype: bf16, seed: 3}\n"
      "run: {input: {random: {batch: 2, tokens: 8, seed: 4}}, schedule: {prefill: 6, decode_steps: 2}}\n";
  EXPECT_TRUE(parse_config(text, "graphs.yaml").run.cuda_graphs);
  EXPECT_FALSE(parse_config(text, "graphs.yaml", {"run.cuda_graphs=false"}).run.cuda_graphs);
  EXPECT_NE(config_text(parse_config(text, "graphs.yaml")).find("run.cuda_graphs=1"), std::string::npos);
  try {
    parse_config(text, "graphs.yaml", {"run.cuda_graphs=sometimes"});
    FAIL() << "run.cuda_graphs: sometimes was accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("run.cuda_graphs"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace mla::test
