// Inference-shaped steps on the CPU layer (docs/design.md, Serving-shaped steps and The latent
// cache): ragged steps (per-sequence positions and token counts, idle sequences, slots in any
// order), dense and paged caches, fp32, bf16 and fp8 cache rows, every path and formulation,
// against the float64 reference run on the same steps with the same cache rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/paged_latent.h"
#include "runtime/base/random_values.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

std::vector<ref::RefSequenceStep> reference_step(const RaggedTestStep& step) {
  std::vector<ref::RefSequenceStep> out;
  for (const SequenceStep& sequence : step) out.push_back({sequence.slot, sequence.start_pos, sequence.new_tokens});
  return out;
}

ref::RefCacheDType reference_cache(KvCacheDType dtype) {
  switch (dtype) {
    case KvCacheDType::BF16: return ref::RefCacheDType::BF16;
    case KvCacheDType::FP8: return ref::RefCacheDType::FP8;
    default: return ref::RefCacheDType::Exact;
  }
}

struct Case {
  LayerShape shape;
  AttentionChoice attention = AttentionChoice::Auto;
  FormulationChoice formulation = FormulationChoice::Auto;
  KvCacheLayout layout = KvCacheLayout::Dense;
  KvCacheDType cache_dtype = KvCacheDType::Auto;
};

std::string describe(const Case& c) {
  return c.shape.name + "_" + to_string(c.attention) + "_" + to_string(c.formulation) + "_" + to_string(c.layout) +
         "_" + to_string(c.cache_dtype);
}
void PrintTo(const Case& c, std::ostream* out) { *out << describe(c); }

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<LayerShape> shapes = layer_shapes();
  for (const LayerShape& shape : shapes) {
    if (shape.name != "odd_dims" && shape.name != "fp8_partial_blocks") continue;
    for (AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard})
      for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb})
        for (KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
          for (KvCacheDType dtype : {KvCacheDType::Auto, KvCacheDType::BF16, KvCacheDType::FP8})
            cases.push_back({shape, attention, formulation, layout, dtype});
  }
  return cases;
}

RunConfig run_config(const Case& c, ComputeDType compute) {
  RunConfig run;
  run.attention = c.attention;
  run.formulation = c.formulation;
  run.compute_dtype = compute;
  run.kv_cache.layout = c.layout;
  run.kv_cache.page_size = 4;  // sequences span several pages
  run.kv_cache.dtype = c.cache_dtype;
  return run;
}

// Runs the schedule on a layer and on the reference; returns each step's relative L2.
std::vector<double> step_errors(const Case& c, ComputeDType compute, ref::RefCacheDType reference_dtype,
                                std::vector<StepReport>* reports = nullptr) {
  const ModelArgs& m = c.shape.model;
  const uint64_t seed = 31;
  const WeightsConfig weights = random_weights(c.shape.weights_dtype, seed);
  const LoadedWeights exact = load_layer_weights(weights, m, whole(m), ComputeDType::FP32);
  MlaLayer layer(m, whole(m), load_layer_weights(weights, m, whole(m), compute).weights, run_config(c, compute));
  ref::RefConfig config = reference_config(m, m.n_heads);
  config.cache_dtype = reference_dtype;
  ref::RefMla reference(
      config, reference_weights(exact.weights), m.max_batch_size,
      c.formulation == FormulationChoice::Naive ? ref::RefFormulation::Naive : ref::RefFormulation::Absorb);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, seed + 1);
  std::vector<double> errors;
  for (const RaggedTestStep& sequences : ragged_test_schedule()) {
    RaggedStep step;
    step.sequences = sequences;
    const std::vector<float> x = packed_input(m, tokens, sequences);
    std::vector<float> y(x.size());
    const StepReport report = layer.forward(x.data(), step, y.data());
    if (reports != nullptr) reports->push_back(report);
    errors.push_back(relative_l2(y, reference.forward_ragged(to_double(x), reference_step(sequences))));
  }
  return errors;
}

class RaggedVsReference : public testing::TestWithParam<Case> {};

// fp32 compute: 1e-5 against a reference that rounds the cache as the case's dtype does. For bf16
// and fp8 rows the bound is 1e-4: the runtime rounds its fp32 c_n and the reference its float64
// one, and at a tie between two codes the two can land on neighbours (one value off by a bf16 or
// e4m3 step), which the other checks in this file bound.
TEST_P(RaggedVsReference, Fp32WithinTolerance) {
  const Case& c = GetParam();
  std::vector<StepReport> reports;
  const std::vector<double> errors = step_errors(c, ComputeDType::FP32, reference_cache(c.cache_dtype), &reports);
  const double bound = c.cache_dtype == KvCacheDType::Auto ? 1e-5 : 1e-4;
  for (size_t i = 0; i < errors.size(); ++i) {
    EXPECT_LE(errors[i], bound) << "step " << i << " (" << reports[i].plan.reason << ")";
    EXPECT_EQ(reports[i].plan.path,
              c.attention == AttentionChoice::Fast ? AttentionPath::Fast : AttentionPath::Standard);
  }
}

// bf16 compute: docs/design.md's 2e-2. With an fp8 cache 4e-2: the runtime quantizes c_n after
// its bf16 rounding (up to 0.4 % off the float64 value), which moves values near a rounding edge
// to the e4m3 code next to the reference's, a step of 6 to 12 % each; the fp8 cache alone is
// about 2.7 % from the exact one on these shapes (QuantizedCache below prints it).
TEST_P(RaggedVsReference, Bf16WithinTolerance) {
  const Case& c = GetParam();
  const KvCacheDType dtype = c.cache_dtype == KvCacheDType::FP8 ? KvCacheDType::FP8 : KvCacheDType::BF16;
  const std::vector<double> errors = step_errors(c, ComputeDType::BF16, reference_cache(dtype));
  const double bound = dtype == KvCacheDType::FP8 ? 4e-2 : 2e-2;
  for (size_t i = 0; i < errors.size(); ++i) EXPECT_LE(errors[i], bound) << "step " << i;
}

INSTANTIATE_TEST_SUITE_P(EveryPath, RaggedVsReference, testing::ValuesIn(all_cases()),
                         [](const testing::TestParamInfo<Case>& param_info) { return describe(param_info.param); });

// What a quantized cache costs: its distance to the unquantized reference, per dtype.
TEST(QuantizedCache, DistanceToTheExactCacheIsBounded) {
  for (const LayerShape& shape : layer_shapes()) {
    if (shape.name != "odd_dims" && shape.name != "fp8_partial_blocks") continue;
    for (KvCacheDType dtype : {KvCacheDType::BF16, KvCacheDType::FP8}) {
      const Case c{shape, AttentionChoice::Fast, FormulationChoice::Absorb, KvCacheLayout::Paged, dtype};
      const std::vector<double> errors = step_errors(c, ComputeDType::FP32, ref::RefCacheDType::Exact);
      const double worst = *std::max_element(errors.begin(), errors.end());
      // e4m3 keeps 3 mantissa bits (a step of 6 to 12 % of a value), bf16 keeps 8.
      EXPECT_LE(worst, dtype == KvCacheDType::FP8 ? 8e-2 : 8e-3) << shape.name << " " << to_string(dtype);
      EXPECT_GT(worst, dtype == KvCacheDType::FP8 ? 1e-3 : 1e-5) << "the cache did not round at all";
      std::printf("[ quantized ] %s cache %s: worst step %.3g from the exact cache\n", shape.name.c_str(),
                  to_string(dtype), worst);
    }
  }
}

// A ragged step gets one plan: the FLOPs of each formulation summed over its sequences, the path
// from the longest one, and a reason that says so.
TEST(RaggedPlan, OneChoiceForTheStepFromSummedFlops) {
  const ModelArgs m = model_args(7168, 16, 1536, 512, 128, 64, 128, 16, 4096);
  RunConfig run;
  std::vector<StepShape> shapes = {StepShape{1, 128, 0, 16, false}};
  for (int i = 0; i < 15; ++i) shapes.push_back(StepShape{1, 1, 2047, 16, false});
  double naive = 0, absorb = 0;
  for (const StepShape& shape : shapes) {
    naive += naive_attention_flops(m, shape);
    absorb += absorb_attention_flops(m, shape);
  }
  const StepPlan plan = plan_ragged_step(m, run, shapes);
  EXPECT_DOUBLE_EQ(plan.naive_flops, naive);
  EXPECT_DOUBLE_EQ(plan.absorb_flops, absorb);
  EXPECT_EQ(plan.formulation, naive < absorb ? Formulation::Naive : Formulation::Absorb);
  EXPECT_EQ(plan.path, AttentionPath::Standard);
  EXPECT_NE(plan.reason.find("longest kv_len 2048 > fast_path_max_len 256"), std::string::npos) << plan.reason;
  // The chunk alone would be naive's; beside fifteen long decodes, absorb is cheaper for the step.
  EXPECT_EQ(plan_ragged_step(m, run, {shapes.front()}).formulation, Formulation::Naive);
  EXPECT_EQ(plan.formulation, Formulation::Absorb);
}

// Results do not depend on which pages a sequence holds: pages handed out in a shuffled order give
// the same bits as pages handed out in order.
TEST(PagedCache, RandomPageAssignmentEqualsContiguous) {
  for (KvCacheDType dtype : {KvCacheDType::Auto, KvCacheDType::FP8}) {
    for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
      const LayerShape shape = layer_shapes().front();
      const ModelArgs& m = shape.model;
      Case c{shape, AttentionChoice::Auto, formulation, KvCacheLayout::Paged, dtype};
      const LoadedWeights loaded =
          load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), ComputeDType::FP32);
      MlaLayer in_order(m, whole(m), loaded.weights, run_config(c, ComputeDType::FP32));
      MlaLayer shuffled(m, whole(m), loaded.weights, run_config(c, ComputeDType::FP32));
      shuffled.cache().shuffle_free_pages(99);
      const std::vector<std::vector<float>> tokens = slot_tokens(m, 6);
      for (const RaggedTestStep& sequences : ragged_test_schedule()) {
        RaggedStep step;
        step.sequences = sequences;
        const std::vector<float> x = packed_input(m, tokens, sequences);
        std::vector<float> y_in_order(x.size()), y_shuffled(x.size());
        in_order.forward(x.data(), step, y_in_order.data());
        shuffled.forward(x.data(), step, y_shuffled.data());
        EXPECT_EQ(0, std::memcmp(y_in_order.data(), y_shuffled.data(), y_in_order.size() * sizeof(float)))
            << to_string(dtype) << " " << to_string(formulation);
      }
    }
  }
}

// Running out of pages is an error naming run.kv_cache.pages, before anything is written; the pages
// of a released sequence serve the next one.
TEST(PagedCache, ExhaustionIsAClearErrorAndReleaseFreesPages) {
  const LayerShape shape = layer_shapes().front();
  const ModelArgs& m = shape.model;
  RunConfig run;
  run.kv_cache.layout = KvCacheLayout::Paged;
  run.kv_cache.page_size = 4;
  run.kv_cache.pages = 5;
  MlaLayer layer(m, whole(m),
                 load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), ComputeDType::FP32).weights,
                 run);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 6);
  const auto run_step = [&](const RaggedTestStep& sequences) {
    RaggedStep step;
    step.sequences = sequences;
    const std::vector<float> x = packed_input(m, tokens, sequences);
    std::vector<float> y(x.size());
    layer.forward(x.data(), step, y.data());
    return y;
  };
  run_step({{0, 0, 12}});  // 3 pages
  EXPECT_EQ(layer.cache().pages_free(), 2);
  EXPECT_EQ(layer.cache().bytes_in_use(), 3 * layer.cache().shape().page_bytes());
  try {
    run_step({{0, 12, 1}, {1, 0, 9}});  // 1 + 3 pages
    FAIL() << "expected CacheFull";
  } catch (const CacheFull& error) {
    EXPECT_NE(std::string(error.what()).find("run.kv_cache.pages"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("needs 4 more page"), std::string::npos) << error.what();
  }
  EXPECT_EQ(layer.cache().pages_free(), 2) << "a refused step took pages";
  EXPECT_EQ(layer.cache().held_len(0), 12) << "a refused step wrote to the cache";
  EXPECT_EQ(layer.cache().held_len(1), 0);
  // Slot 0 finishes; its pages serve slot 1, whose result equals a run on a fresh cache.
  layer.release_sequence(0);
  EXPECT_EQ(layer.cache().pages_free(), 5);
  EXPECT_EQ(layer.cache().peak_bytes_in_use(), 3 * layer.cache().shape().page_bytes());
  const std::vector<float> reused = run_step({{1, 0, 9}});
  MlaLayer fresh(m, whole(m),
                 load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), ComputeDType::FP32).weights,
                 run);
  RaggedStep step;
  step.sequences = {{1, 0, 9}};
  const std::vector<float> x = packed_input(m, tokens, step.sequences);
  std::vector<float> y(x.size());
  fresh.forward(x.data(), step, y.data());
  EXPECT_EQ(0, std::memcmp(reused.data(), y.data(), y.size() * sizeof(float)));
}

// Under the split (parallel.context_parallel) a rank's pool holds its share of every slot, dense
// or paged: 1/G of the whole one, rounded up to whole rows and pages, in every row dtype.
TEST(PagedCache, ASplitCacheHoldsARanksShareInEitherLayout) {
  ModelArgs m;
  m.max_batch_size = 3;
  m.max_seq_len = 100;
  m.kv_lora_rank = 24;
  m.qk_rope_head_dim = 8;
  for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged}) {
    for (const KvCacheDType dtype : {KvCacheDType::FP32, KvCacheDType::BF16, KvCacheDType::FP8}) {
      KvCacheConfig config;
      config.layout = layout;
      config.dtype = dtype;
      config.page_size = 16;
      const int64_t whole =
          latent_cache_shape(m, config, false, 1).pages * latent_cache_shape(m, config, false, 1).page_bytes();
      for (const int64_t group : {2, 3, 4}) {
        const LatentCacheShape shape = latent_cache_shape(m, config, false, group);
        const int64_t rows = (m.max_seq_len + group - 1) / group;
        EXPECT_EQ(shape.max_seq_len, rows);
        const int64_t rows_held = layout == KvCacheLayout::Dense ? rows : (rows + 15) / 16 * 16;
        EXPECT_EQ(shape.pages * shape.page_bytes(), m.max_batch_size * rows_held * latent_row_bytes(shape.dtype, 24, 8))
            << to_string(layout) << " " << to_string(dtype) << " groups of " << group;
        EXPECT_LT(shape.pages * shape.page_bytes(), whole / group + m.max_batch_size * 16 * 4 * 32)
            << to_string(layout) << " " << to_string(dtype) << " groups of " << group;
      }
    }
  }
}

// The CUDA layer keeps its rows on the device and the pages here: an external pool hands out the
// same pages and block tables as a host one, holds no bytes of its own and reports the pool's size.
TEST(PagedCache, AnExternalPoolKeepsTheSameBooksWithoutHostBytes) {
  LatentCacheShape shape;
  shape.slots = 3;
  shape.max_seq_len = 32;
  shape.latent_dim = 144;
  shape.rope_dim = 8;
  shape.dtype = LatentDType::FP8;
  shape.paged = true;
  shape.page_size = 4;
  shape.pages = 10;
  LatentCache host(shape);
  LatentCache external(shape, LatentCachePool::External);
  EXPECT_EQ(external.pool_bytes(), host.pool_bytes());
  EXPECT_EQ(external.pool_bytes(), 10 * 4 * latent_row_bytes(LatentDType::FP8, 144, 8));
  RaggedStep step;
  step.sequences = {{2, 0, 9}, {0, 0, 3}};
  for (LatentCache* cache : {&host, &external}) cache->reserve(step);
  std::vector<int32_t> host_table, external_table;
  const PagedLatentView host_view = host.view({2, 0}, host_table);
  const PagedLatentView external_view = external.view({2, 0}, external_table);
  EXPECT_NE(host_view.pool, nullptr);
  EXPECT_EQ(external_view.pool, nullptr);
  EXPECT_EQ(external_table, host_table);
  EXPECT_EQ(external.bytes_in_use(), 4 * shape.page_bytes());
  step.sequences = {{1, 0, 32}};  // 8 pages, 6 free
  EXPECT_THROW(external.reserve(step), CacheFull);
  EXPECT_EQ(external.pages_free(), 6);
}

// A forked sequence holds copies of its source's rows in pages of its own: its next steps give the
// same outputs as the source's would (dense and paged caches, fp32 and fp8 rows); a fork the pool
// cannot hold is refused whole, and one into a slot that holds positions is refused.
TEST(PagedCache, AForkedSequenceContinuesAsItsSourceWould) {
  const LayerShape shape = layer_shapes().front();
  const ModelArgs& m = shape.model;
  const LoadedWeights loaded =
      load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), ComputeDType::FP32);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 6);
  for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
    for (const KvCacheDType dtype : {KvCacheDType::Auto, KvCacheDType::FP8}) {
      const std::string name = std::string(to_string(layout)) + " " + to_string(dtype);
      Case c{shape, AttentionChoice::Auto, FormulationChoice::Absorb, layout, dtype};
      RunConfig run = run_config(c, ComputeDType::FP32);
      run.kv_cache.page_size = 4;
      MlaLayer layer(m, whole(m), loaded.weights, run);
      const auto step_of = [&](int64_t slot, int64_t start_pos, int64_t count, const std::vector<float>& source) {
        RaggedStep step;
        step.sequences = {{slot, start_pos, count}};
        const std::vector<float> x(source.begin() + start_pos * m.dim, source.begin() + (start_pos + count) * m.dim);
        std::vector<float> y(x.size());
        layer.forward(x.data(), step, y.data());
        return y;
      };
      step_of(0, 0, 11, tokens[0]);
      layer.fork_sequence(0, 2);
      EXPECT_EQ(layer.cache().held_len(2), 11) << name;
      // Slot 2 continues with slot 0's next token, then slot 0 does: the same bits.
      const std::vector<float> forked = step_of(2, 11, 2, tokens[0]);
      const std::vector<float> source = step_of(0, 11, 2, tokens[0]);
      EXPECT_EQ(0, std::memcmp(forked.data(), source.data(), source.size() * sizeof(float))) << name;
      EXPECT_THROW(layer.fork_sequence(0, 2), std::invalid_argument) << name << ": slot 2 holds positions";
      EXPECT_THROW(layer.fork_sequence(1, 1), std::invalid_argument) << name;
    }
  RunConfig run;
  run.kv_cache.layout = KvCacheLayout::Paged;
  run.kv_cache.page_size = 4;
  run.kv_cache.pages = 5;
  MlaLayer layer(m, whole(m), loaded.weights, run);
  RaggedStep step;
  step.sequences = {{0, 0, 12}};  // 3 of 5 pages
  const std::vector<float> x = packed_input(m, tokens, step.sequences);
  std::vector<float> y(x.size());
  layer.forward(x.data(), step, y.data());
  EXPECT_THROW(layer.fork_sequence(0, 1), CacheFull);
  EXPECT_EQ(layer.cache().pages_free(), 2) << "a refused fork took pages";
  EXPECT_EQ(layer.cache().held_len(1), 0);
}

TEST(RaggedStep, BadStepsAreRefusedNamingTheSequence) {
  const LayerShape shape = layer_shapes().front();
  const ModelArgs& m = shape.model;  // max_batch_size 3, max_seq_len 64
  MlaLayer layer(m, whole(m),
                 load_layer_weights(random_weights(shape.weights_dtype, 5), m, whole(m), ComputeDType::FP32).weights,
                 RunConfig{});
  std::vector<float> x(static_cast<size_t>(70 * m.dim), 0.5f), y(x.size());
  const auto refusal = [&](const RaggedTestStep& sequences) {
    RaggedStep step;
    step.sequences = sequences;
    try {
      layer.forward(x.data(), step, y.data());
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(refusal({{3, 0, 1}}).find("sequence 0 of the step (slot 3"), std::string::npos);
  EXPECT_NE(refusal({{0, 0, 1}, {0, 1, 1}}).find("appears twice"), std::string::npos);
  EXPECT_NE(refusal({{1, 60, 5}}).find("max_seq_len 64"), std::string::npos);
  EXPECT_NE(refusal({{1, 0, -1}}).find("does not fit"), std::string::npos);
  EXPECT_NE(refusal({{2, 0, 0}}).find("no tokens"), std::string::npos);
  EXPECT_NE(refusal({{0, 0, 2}, {1, 3, 1}}).find("start_pos 3 of slot 1 skips past the 0 positions"),
            std::string::npos);
}

// A step's tokens in runs: every token in exactly one run, in order; a sequence cut between runs
// keeps its positions (start_pos moves by the tokens earlier runs took); each run's sequences
// index the step's from first_sequence on; idle sequences are not in the index at all.
TEST(RaggedStep, TokenRunsCoverTheStepAtItsPositions) {
  RaggedStep step;
  step.sequences = {{4, 10, 3}, {1, 0, 0}, {0, 5, 6}, {2, 0, 1}};
  const RaggedIndex index = ragged_index(step);  // tokens: slot 4 at 10-12, slot 0 at 5-10, slot 2 at 0
  for (const int64_t max_tokens : {1, 2, 4, 10, 100}) {
    int64_t next_token = 0;
    for (const TokenRun& run : token_runs(index, max_tokens)) {
      EXPECT_EQ(run.first_token, next_token);
      EXPECT_LE(run.tokens, max_tokens);
      EXPECT_EQ(static_cast<int64_t>(run.index.token_position.size()), run.tokens);
      for (int64_t t = 0; t < run.tokens; ++t) {
        const int64_t token = run.first_token + t;
        const int64_t b = run.index.token_sequence[t];
        EXPECT_EQ(run.index.token_position[t], index.token_position[token]) << max_tokens << " token " << token;
        EXPECT_EQ(run.first_sequence + b, index.token_sequence[token]) << max_tokens << " token " << token;
        EXPECT_EQ(run.index.slot[b], index.slot[run.first_sequence + b]);
        // The token's place in its run's sequence gives its position, as in the step.
        EXPECT_EQ(run.index.start_pos[b] + (t - run.index.token_offset[b]), index.token_position[token]);
      }
      next_token += run.tokens;
    }
    EXPECT_EQ(next_token, 10) << max_tokens;
  }
  const std::vector<TokenRun> runs = token_runs(index, 4);
  ASSERT_EQ(runs.size(), 3u);
  // Run 1 holds the second sequence's tokens at positions 6-9 (its first came in run 0).
  EXPECT_EQ(runs[1].first_sequence, 1);
  EXPECT_EQ(runs[1].index.start_pos, std::vector<int64_t>{6});
  EXPECT_EQ(runs[1].index.new_tokens, std::vector<int64_t>{4});
  EXPECT_THROW(token_runs(index, 0), std::invalid_argument);

  // This rank's rows of the step (shard 1 of 2: odd positions), each at row position / 2.
  const ShardRows own = shard_rows_of_step(index, 2, 1);
  EXPECT_EQ(own.token, (std::vector<int64_t>{1, 3, 5, 7}));  // positions 11, 5, 7, 9
  EXPECT_EQ(own.sequence, (std::vector<int64_t>{0, 1, 1, 1}));
  EXPECT_EQ(own.row, (std::vector<int64_t>{5, 2, 3, 4}));
}

// docs/design.md's fp8 rows: 656 bytes at C = 512, dr = 64; codes and scales as the reference's
// rule computes them, a partial last block, and an all-zero block (scale 1).
TEST(Fp8LatentRow, MatchesTheRuleAndItsSize) {
  EXPECT_EQ(latent_row_bytes(LatentDType::FP8, 512, 64), 656);
  EXPECT_EQ(latent_row_bytes(LatentDType::BF16, 512, 64), 1152);
  for (const int64_t latent_dim : {512, 200, 20}) {
    const int64_t rope_dim = 6;
    std::vector<float> row(static_cast<size_t>(latent_dim + rope_dim));
    const uint64_t key = random_stream_key(7, "latent row");
    for (size_t i = 0; i < row.size(); ++i) row[i] = 3.0f * random_uniform(key, i);
    std::fill(row.begin(), row.begin() + std::min<int64_t>(latent_dim, 128), 0.0f);  // the first block is zero
    row[static_cast<size_t>(latent_dim) - 1] = 1e4f;  // the last block's scale is set by one large value
    std::vector<uint8_t> stored(static_cast<size_t>(latent_row_bytes(LatentDType::FP8, latent_dim, rope_dim)));
    quantize_latent_row_fp8(row.data(), latent_dim, rope_dim, stored.data());
    std::vector<float> back(row.size());
    dequantize_latent_row_fp8(stored.data(), latent_dim, rope_dim, back.data());
    const std::vector<double> row_double(row.begin(), row.begin() + latent_dim);
    const std::vector<double> want = ref::fp8_latent_row(row_double.data(), latent_dim);
    for (int64_t i = 0; i < latent_dim; ++i) {
      EXPECT_NEAR(back[i], want[i], 1e-6 * std::abs(want[i])) << "C " << latent_dim << ", value " << i;
    }
    EXPECT_EQ(back[static_cast<size_t>(latent_dim) - 1], 1e4f) << "the block's largest value maps to code 448";
    for (int64_t i = 0; i < rope_dim; ++i) {
      EXPECT_EQ(back[latent_dim + i], static_cast<float>(ref::round_to_bf16(row[latent_dim + i])));
    }
  }
}

}  // namespace
}  // namespace mla::test
