// The CUDA layer on serving-shaped steps (docs/design.md, Serving-shaped steps and The latent
// cache), against the CPU layer on the same steps: ragged steps (per-sequence positions and token
// counts, idle sequences, slots out of order) on every path x formulation x cache layout x cache
// dtype in both compute precisions; uniform steps through a paged or quantized cache; continuous
// batching; page exhaustion; emulated tensor parallelism. Bounds against the CPU layer: bound_for
// (tests/gpu/layer_test_util.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/device_memory.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/decode_graphs.h"
#include "runtime/layer/mla_layer_cuda.h"
#include "runtime/layer/request_runner.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/layer_test_util.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

RunConfig serving_config(AttentionChoice attention, FormulationChoice formulation, ComputeDType compute,
                         KvCacheLayout layout, KvCacheDType cache_dtype) {
  RunConfig run;
  run.attention = attention;
  run.formulation = formulation;
  run.compute_dtype = compute;
  run.score_chunk_bytes = 512;  // the standard path in query chunks of a row or two
  run.kv_cache.layout = layout;
  run.kv_cache.page_size = 4;  // sequences span several pages
  run.kv_cache.dtype = cache_dtype;
  return run;
}

struct ServingRun {
  std::vector<std::vector<float>> y;  // per step
  std::vector<StepReport> reports;
  int64_t graphs_captured = 0, graph_replays = 0;  // the CUDA layer's decode graphs (run.cuda_graphs)
};

ServingRun cpu_steps(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, const LayerWeights& weights,
                     const std::vector<std::vector<float>>& tokens, const std::vector<RaggedTestStep>& steps) {
  MlaLayer layer(m, shard, weights, run);
  SingleProcessCommunicator comm;
  CpuStepExecutor executor(layer, comm);
  ServingRun result;
  result.y = run_ragged_steps(executor, m, tokens, steps, &result.reports);
  return result;
}

// page_seed != 0: the paged pool hands out its pages in an order drawn from it.
ServingRun cuda_steps(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, const LayerWeights& weights,
                      const std::vector<std::vector<float>>& tokens, const std::vector<RaggedTestStep>& steps,
                      uint64_t page_seed = 0) {
  CudaMlaLayer layer(m, shard, weights, run, limits_for(m, steps));
  if (page_seed != 0) layer.cache().shuffle_free_pages(page_seed);
  SingleProcessCommunicator comm;
  CudaStepExecutor executor(layer, comm, {}, 0);
  ServingRun result;
  result.y = run_ragged_steps(executor, m, tokens, steps, &result.reports);
  result.graphs_captured = layer.decode_graphs_captured();
  result.graph_replays = layer.decode_graph_replays();
  return result;
}

using CudaServing = GpuTest;

TEST_F(CudaServing, RaggedStepsMatchTheCpuLayerOnEveryPathFormulationLayoutAndCacheDtype) {
  const std::vector<RaggedTestStep> steps = ragged_test_schedule();
  for (const LayerShape& shape : layer_shapes()) {
    if (shape.name != "odd_dims" && shape.name != "fp8_partial_blocks") continue;  // C = 20 and C = 144
    const ModelArgs& m = shape.model;
    const std::vector<std::vector<float>> tokens = slot_tokens(m, 41);
    for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
      const LoadedWeights loaded = load_layer_weights(random_weights(shape.weights_dtype, 42), m, whole(m), compute);
      for (const AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard})
        for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb})
          for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
            for (const KvCacheDType cache_dtype : {KvCacheDType::Auto, KvCacheDType::BF16, KvCacheDType::FP8}) {
              const RunConfig run = serving_config(attention, formulation, compute, layout, cache_dtype);
              const std::string name = shape.name + " " + to_string(compute) + " " + to_string(attention) + " " +
                                       to_string(formulation) + " " + to_string(layout) + " " + to_string(cache_dtype);
              const ServingRun want = cpu_steps(m, run, whole(m), loaded.weights, tokens, steps);
              // Paged: the GPU's pages in a shuffled order, the CPU's in order; the results must agree.
              const ServingRun got =
                  cuda_steps(m, run, whole(m), loaded.weights, tokens, steps, layout == KvCacheLayout::Paged ? 7 : 0);
              ASSERT_EQ(got.y.size(), want.y.size());
              for (size_t i = 0; i < got.y.size(); ++i) {
                EXPECT_LE(relative_l2_error(got.y[i], want.y[i]), bound_for(compute, cache_dtype))
                    << name << " step " << i;
                EXPECT_EQ(got.reports[i].plan.path, want.reports[i].plan.path) << name << " step " << i;
                EXPECT_EQ(got.reports[i].plan.formulation, want.reports[i].plan.formulation) << name << " step " << i;
              }
            }
    }
  }
}

// The same weights and steps through the dense fp32 cache (the batched route) and through a paged
// cache of fp32 rows (a sequence at a time through the block tables), with an explicit mask too.
// Decodes past the fast kernels' shared-memory limit: the GPU takes the split-KV decode kernel
// (the keys of a sequence over many blocks, merged by log-sum-exp), the CPU its standard path; the
// results agree on every cache layout and row dtype, with a few tokens per sequence too.
TEST_F(CudaServing, LongDecodesTakeTheSplitKvKernelAndMatchTheCpuLayer) {
  const ModelArgs m = model_args(64, 8, 32, 48, 16, 8, 16, 3, 1200);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 43);
  const std::vector<RaggedTestStep> steps = {{{0, 0, 550}, {1, 0, 350}, {2, 0, 40}},
                                             {{0, 550, 550}, {1, 350, 350}},
                                             {{0, 1100, 1}, {1, 700, 2}, {2, 40, 1}},
                                             {{2, 41, 4}, {0, 1101, 1}, {1, 702, 1}}};
  for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
    const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::BF16, 44), m, whole(m), compute);
    for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
      for (const KvCacheDType cache_dtype : {KvCacheDType::Auto, KvCacheDType::BF16, KvCacheDType::FP8}) {
        RunConfig run = serving_config(AttentionChoice::Auto, FormulationChoice::Auto, compute, layout, cache_dtype);
        run.score_chunk_bytes = int64_t{1} << 20;
        run.kv_cache.page_size = 16;
        const std::string name =
            std::string(to_string(compute)) + " " + to_string(layout) + " " + to_string(cache_dtype);
        const ServingRun want = cpu_steps(m, run, whole(m), loaded.weights, tokens, steps);
        const ServingRun got =
            cuda_steps(m, run, whole(m), loaded.weights, tokens, steps, layout == KvCacheLayout::Paged ? 9 : 0);
        ASSERT_EQ(got.y.size(), want.y.size());
        for (size_t i = 2; i < got.y.size(); ++i) {
          EXPECT_LE(relative_l2_error(got.y[i], want.y[i]), bound_for(compute, cache_dtype)) << name << " step " << i;
          EXPECT_EQ(got.reports[i].plan.path, AttentionPath::Fast) << name << " step " << i;
          EXPECT_NE(got.reports[i].plan.reason.find("split-KV decode kernel"), std::string::npos)
              << name << " step " << i << ": " << got.reports[i].plan.reason;
        }
      }
  }
}

// The absorb formulation's folded queries and latent outputs are held for the tokens
// run.score_chunk_bytes allows (at least a decode step's): longer absorb steps go a run of tokens at
// a time, whole sequences or pieces of one. A layer whose buffers hold 12 tokens against one that
// holds every step whole: a uniform prefill of 3 x 40 tokens (pieces of 12 of each sequence), a
// uniform chunk of 3 x 3 (one run of 9 on the standard path; the split-KV kernel's on the fast), a
// ragged step of 40, 1 and 7 tokens (pieces, then a run of 8), decodes; through the block tables
// (gathered rows: paged, or bf16 in bf16 compute), and through the dense batched route with an
// explicit mask (its rows follow each piece); both against the CPU layer.
TEST_F(CudaServing, AbsorbStepsLongerThanItsBuffersGoInRunsOfTokens) {
  const ModelArgs m = model_args(64, 4, 32, 48, 16, 8, 16, 3, 96);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 47);
  const std::vector<RaggedTestStep> steps = {{{0, 0, 40}, {1, 0, 40}, {2, 0, 40}},
                                             {{0, 40, 3}, {1, 40, 3}, {2, 40, 3}},
                                             {{1, 43, 40}, {0, 43, 1}, {2, 43, 7}},
                                             {{0, 44, 1}, {1, 83, 1}, {2, 50, 1}}};
  for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
    const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::BF16, 48), m, whole(m), compute);
    for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
      for (const AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard}) {
        RunConfig run = serving_config(attention, FormulationChoice::Absorb, compute, layout, KvCacheDType::Auto);
        run.kv_cache.page_size = 16;
        const std::string name = std::string(to_string(compute)) + " " + to_string(layout) + " " + to_string(attention);
        run.score_chunk_bytes = int64_t{1} << 30;  // every step whole
        const ServingRun whole_steps = cuda_steps(m, run, whole(m), loaded.weights, tokens, steps);
        run.score_chunk_bytes = 4096;  // 12 tokens: a decode step's of 3 sequences
        const ServingRun in_runs = cuda_steps(m, run, whole(m), loaded.weights, tokens, steps);
        const ServingRun want = cpu_steps(m, run, whole(m), loaded.weights, tokens, steps);
        ASSERT_EQ(in_runs.y.size(), steps.size());
        for (size_t i = 0; i < steps.size(); ++i) {
          EXPECT_LE(relative_l2_error(in_runs.y[i], whole_steps.y[i]), compute == ComputeDType::FP32 ? 1e-6 : 5e-3)
              << name << " step " << i;
          EXPECT_LE(relative_l2_error(in_runs.y[i], want.y[i]), bound_for(compute, KvCacheDType::Auto))
              << name << " step " << i;
        }
      }
    // The dense batched route (uniform steps through forward) with a mask, on the standard path.
    const InputTensor x = random_input(m, 3, 44, 49);
    std::vector<float> mask(44 * 44, -INFINITY);
    for (int64_t row = 0; row < 44; ++row)
      for (int64_t col = 0; col <= row; ++col) mask[row * 44 + col] = (row * 7 + col) % 5 == 0 ? -2.0f : 0.0f;
    const std::vector<int64_t> schedule = {40, 3, 1};
    const auto dense_run = [&](int64_t score_chunk_bytes) {
      RunConfig run = serving_config(AttentionChoice::Auto, FormulationChoice::Absorb, compute, KvCacheLayout::Dense,
                                     KvCacheDType::FP32);
      run.score_chunk_bytes = score_chunk_bytes;
      CudaMlaLayer layer(m, whole(m), loaded.weights, run, CudaLayerLimits{3, 40, 44, true});
      SingleProcessCommunicator comm;
      CudaStepExecutor executor(layer, comm, mask, x.tokens);
      return run_schedule(executor, x, schedule, mask, {});
    };
    const RunResult masked_runs = dense_run(4096);
    EXPECT_LE(relative_l2_error(masked_runs.y, dense_run(int64_t{1} << 30).y),
              compute == ComputeDType::FP32 ? 1e-6 : 5e-3)
        << to_string(compute) << " dense, masked";
    RunConfig cpu_run = serving_config(AttentionChoice::Auto, FormulationChoice::Absorb, compute, KvCacheLayout::Dense,
                                       KvCacheDType::FP32);
    EXPECT_LE(relative_l2_error(masked_runs.y, layer_run(m, cpu_run, whole(m), loaded.weights, x, schedule, mask).y),
              bound_for(compute, KvCacheDType::FP32))
        << to_string(compute) << " dense, masked, vs the CPU layer";
  }
}

// run.cuda_graphs (docs/cuda_backend.md, The decode step as one CUDA graph): decode steps replayed
// from graphs captured once per shape give the bits of the same steps launched one by one, at
// batch 1 and 37, as the longest kv_len crosses from one bucket to the next (a second capture), with
// a step where one sequence takes 2 tokens (another shape), over dense and paged caches of fp32 and
// fp8 rows in both compute dtypes; and both agree with the CPU layer. A shape's first step runs
// without a graph, its second is captured and replayed, later ones replay.
TEST_F(CudaServing, GraphReplayedDecodesEqualTheSameStepsLaunchedOneByOne) {
  const ModelArgs m = model_args(64, 8, 32, 48, 16, 8, 16, 37, 128);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 45);
  for (const int64_t batch : {1, 37}) {
    std::vector<RaggedTestStep> steps(1);
    std::vector<int64_t> held(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      held[static_cast<size_t>(b)] = 50 + b % 9;
      steps[0].push_back({b, 0, held[static_cast<size_t>(b)]});
    }
    // The shapes the decode steps take, in order: (longest kv_len's bucket, most new tokens).
    std::map<std::pair<int64_t, int64_t>, int64_t> steps_of_shape;
    for (int64_t d = 0; d < 19; ++d) {
      RaggedTestStep step;
      int64_t longest = 0, most = 0;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t new_tokens = d >= 16 && b == batch / 2 ? 2 : 1;
        step.push_back({b, held[static_cast<size_t>(b)], new_tokens});
        held[static_cast<size_t>(b)] += new_tokens;
        longest = std::max(longest, held[static_cast<size_t>(b)]);
        most = std::max(most, new_tokens);
      }
      ++steps_of_shape[{decode_kv_bucket(longest), most}];
      steps.push_back(step);
    }
    ASSERT_GE(steps_of_shape.size(), 3u) << "the steps should cross a kv bucket and take two token counts";
    int64_t want_replays = 0;
    for (const auto& [shape, count] : steps_of_shape) want_replays += count - 1;

    for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
      const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::FP8, 46), m, whole(m), compute);
      for (const KvCacheLayout layout : {KvCacheLayout::Dense, KvCacheLayout::Paged})
        for (const KvCacheDType cache_dtype : {KvCacheDType::Auto, KvCacheDType::FP8}) {
          RunConfig run =
              serving_config(AttentionChoice::Auto, FormulationChoice::Absorb, compute, layout, cache_dtype);
          run.score_chunk_bytes = int64_t{1} << 20;
          run.kv_cache.page_size = 16;
          const std::string name = "batch " + std::to_string(batch) + " " + to_string(compute) + " " +
                                   to_string(layout) + " " + to_string(cache_dtype);
          const uint64_t page_seed = layout == KvCacheLayout::Paged ? 11 : 0;
          run.cuda_graphs = true;
          const ServingRun graphed = cuda_steps(m, run, whole(m), loaded.weights, tokens, steps, page_seed);
          run.cuda_graphs = false;
          const ServingRun one_by_one = cuda_steps(m, run, whole(m), loaded.weights, tokens, steps, page_seed);
          const ServingRun want = cpu_steps(m, run, whole(m), loaded.weights, tokens, steps);
          EXPECT_EQ(graphed.graphs_captured, static_cast<int64_t>(steps_of_shape.size())) << name;
          EXPECT_EQ(graphed.graph_replays, want_replays) << name;
          EXPECT_EQ(one_by_one.graphs_captured, 0) << name;
          ASSERT_EQ(graphed.y.size(), steps.size());
          ASSERT_EQ(one_by_one.y.size(), steps.size());
          for (size_t i = 0; i < steps.size(); ++i) {
            EXPECT_EQ(0, std::memcmp(graphed.y[i].data(), one_by_one.y[i].data(), graphed.y[i].size() * sizeof(float)))
                << name << " step " << i << ": the replayed step's bits differ from the step launched one by one";
            EXPECT_LE(relative_l2_error(graphed.y[i], want.y[i]), bound_for(compute, cache_dtype))
                << name << " step " << i;
            if (i > 0) {
              EXPECT_NE(graphed.reports[i].plan.reason.find("split-KV decode kernel"), std::string::npos)
                  << name << " step " << i << ": " << graphed.reports[i].plan.reason;
            }
          }
        }
    }
  }
}

// Uniform steps over rows the batched kernels cannot read in place (paged, or bf16 rows: dtype auto
// in bf16 compute) take their rows gathered a group of sequences at a time (attend_gathered), with
// an explicit mask too: against the dense fp32 cache's batched route on the same steps (fp32:
// 1e-5; bf16, where only the order of fp32 sums may differ and move a bf16 rounding: 5e-3), and
// against the CPU layer; the flash kernels' route (bf16) against the CPU layer.
TEST_F(CudaServing, UniformStepsThroughGatheredRowsEqualTheDenseFp32Cache) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 2, 32);
  const InputTensor x = random_input(m, 2, 10, 44);
  const std::vector<int64_t> steps = {5, 3, 1, 1};
  std::vector<float> mask(100, -INFINITY);
  for (int64_t row = 0; row < 10; ++row)
    for (int64_t col = 0; col <= row; ++col) mask[row * 10 + col] = (row + col) % 3 == 0 ? -1.5f : 0.0f;
  for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
    const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::BF16, 43), m, whole(m), compute);
    for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
      for (const bool masked : {false, true}) {
        const std::vector<float> step_mask = masked ? mask : std::vector<float>{};
        const auto run_with = [&](KvCacheLayout layout, KvCacheDType cache_dtype) {
          const RunConfig run = serving_config(AttentionChoice::Auto, formulation, compute, layout, cache_dtype);
          const CudaLayerLimits limits{2, 5, 10, masked};
          CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits);
          SingleProcessCommunicator comm;
          CudaStepExecutor executor(layer, comm, step_mask, x.tokens);
          return run_schedule(executor, x, steps, step_mask, {});
        };
        const double bound = compute == ComputeDType::FP32 ? 1e-5 : 5e-3;
        const std::string name =
            std::string(to_string(compute)) + " " + to_string(formulation) + (masked ? " masked" : "");
        const RunConfig cpu_run =
            serving_config(AttentionChoice::Auto, formulation, compute, KvCacheLayout::Paged, KvCacheDType::Auto);
        const RunResult want = layer_run(m, cpu_run, whole(m), loaded.weights, x, steps, step_mask);
        // bf16 steps on the fast path take the flash kernels, absorb's reading the bf16 rows in place
        // (no gather) where the dense fp32 cache takes the kernel over fp32 rows: the flash route is
        // held to the CPU layer, the gathered route (MLA_CUDA_FLASH=0) to the dense cache's.
        const RunResult flash = run_with(KvCacheLayout::Paged, KvCacheDType::Auto);
        EXPECT_LE(relative_l2_error(flash.y, want.y), bound_for(compute, KvCacheDType::Auto)) << name << " flash";
        const ScopedEnv gathered_route("MLA_CUDA_FLASH", "0");
        const RunResult dense = run_with(KvCacheLayout::Dense, KvCacheDType::FP32);
        const RunResult paged = run_with(KvCacheLayout::Paged, KvCacheDType::Auto);
        EXPECT_LE(relative_l2_error(paged.y, dense.y), bound) << name << " paged";
        if (compute == ComputeDType::BF16) {
          EXPECT_LE(relative_l2_error(run_with(KvCacheLayout::Dense, KvCacheDType::Auto).y, dense.y), bound)
              << name << " dense bf16 rows";
        }
        EXPECT_LE(relative_l2_error(paged.y, want.y), bound_for(compute, KvCacheDType::Auto))
            << name << " vs the CPU layer";
      }
    }
  }
}

TEST_F(CudaServing, ContinuousBatchingMatchesTheCpuLayer) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 3, 64);
  const std::vector<RequestConfig> requests = {
      {"a", 9, 4, 0}, {"b", 14, 3, 1}, {"c", 5, 6, 1}, {"d", 20, 2, 3}, {"e", 3, 5, 6}};
  InputConfig input;
  input.random = true;
  input.seed = 45;
  const RequestInputs inputs = load_request_inputs(input, requests, m);
  for (const KvCacheDType cache_dtype : {KvCacheDType::Auto, KvCacheDType::FP8}) {
    for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
      RunConfig run =
          serving_config(AttentionChoice::Auto, FormulationChoice::Auto, compute, KvCacheLayout::Paged, cache_dtype);
      run.kv_cache.pages = 12;  // fewer than all requests at once: some wait for pages
      run.max_step_tokens = 8;  // prompts in several chunks beside the decodes
      const std::vector<PlannedStep> plan = plan_requests(requests, request_limits(m, run));
      const LoadedWeights loaded = load_layer_weights(random_weights(WeightDType::BF16, 46), m, whole(m), compute);
      SingleProcessCommunicator comm;
      MlaLayer cpu_layer(m, whole(m), loaded.weights, run);
      CpuStepExecutor cpu(cpu_layer, comm);
      const RequestRunResult want = run_requests(cpu, requests, inputs, plan);
      CudaLayerLimits limits;
      limits.max_batch = m.max_batch_size;
      limits.max_step_len = run.max_step_tokens;
      limits.max_kv_len = m.max_seq_len;
      limits.max_step_tokens = run.max_step_tokens;
      CudaMlaLayer cuda_layer(m, whole(m), loaded.weights, run, limits);
      CudaStepExecutor cuda(cuda_layer, comm, {}, 0);
      const RequestRunResult got = run_requests(cuda, requests, inputs, plan);
      const std::string name = std::string(to_string(cache_dtype)) + " cache, " + to_string(compute);
      ASSERT_EQ(got.y.size(), requests.size());
      for (size_t r = 0; r < requests.size(); ++r) {
        EXPECT_LE(relative_l2_error(got.y[r], want.y[r]), bound_for(compute, cache_dtype))
            << requests[r].name << ", " << name;
      }
      // Pages follow the tokens held, the same on both backends, as are the rows' bytes (dtype auto
      // stores the compute dtype on both).
      EXPECT_EQ(got.peak_cache_bytes_in_use, want.peak_cache_bytes_in_use) << name;
      EXPECT_EQ(got.cache_pool_bytes, want.cache_pool_bytes) << name;
      EXPECT_EQ(cuda_layer.cache().pages_free(), run.kv_cache.pages) << name << ": every page back in the pool";
    }
  }
}

TEST_F(CudaServing, PageExhaustionIsAClearErrorThatLeavesTheCacheAsItWas) {
  const LayerShape shape = layer_shapes().front();
  const ModelArgs& m = shape.model;
  RunConfig run = serving_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::FP32,
                                 KvCacheLayout::Paged, KvCacheDType::FP8);
  run.kv_cache.pages = 5;  // 20 positions
  const LoadedWeights loaded =
      load_layer_weights(random_weights(shape.weights_dtype, 47), m, whole(m), ComputeDType::FP32);
  const std::vector<RaggedTestStep> fits = {{{0, 0, 6}, {1, 0, 6}}};      // 4 pages
  const std::vector<RaggedTestStep> too_much = {{{0, 6, 3}, {1, 6, 6}}};  // 2 more: 1 is free
  const std::vector<RaggedTestStep> after = {{{0, 6, 3}, {1, 0, 6}}};     // slot 1 anew, after its release
  CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits_for(m, {fits[0], too_much[0], after[0]}));
  SingleProcessCommunicator comm;
  CudaStepExecutor executor(layer, comm, {}, 0);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 48);
  run_ragged_steps(executor, m, tokens, fits);
  const int64_t free_before = layer.cache().pages_free();
  try {
    run_ragged_steps(executor, m, tokens, too_much);
    FAIL() << "a step needing 2 more pages with 1 free ran";
  } catch (const CacheFull& error) {
    EXPECT_NE(std::string(error.what()).find("run.kv_cache.pages"), std::string::npos) << error.what();
  }
  EXPECT_EQ(layer.cache().pages_free(), free_before);
  EXPECT_EQ(layer.cache().held_len(0), 6);
  EXPECT_EQ(layer.cache().held_len(1), 6);
  // After a release the step fits, and equals the CPU layer's same steps.
  layer.release_sequence(1);
  const std::vector<std::vector<float>> got = run_ragged_steps(executor, m, tokens, after);
  const ServingRun want = cpu_steps(m, run, whole(m), loaded.weights, tokens, {fits[0], after[0]});
  EXPECT_LE(relative_l2_error(got[0], want.y[1]), bound_for(ComputeDType::FP32, KvCacheDType::FP8));
}

// Device memory as measured for a layer over paged fp8 rows: the report equals what it allocated
// (the pool of fp8 rows, the step's index and block table, the fp32 rows it attends over), and
// the pool is the pages' bytes.
TEST_F(CudaServing, APagedFp8LayerReportsTheMemoryItHolds) {
  const LayerShape shape = layer_shapes().back();  // fp8 weights, C = 144: a partial fp8 block
  ASSERT_EQ(shape.name, "fp8_partial_blocks");
  const ModelArgs& m = shape.model;
  const LoadedWeights loaded =
      load_layer_weights(random_weights(shape.weights_dtype, 51), m, whole(m), ComputeDType::BF16);
  RunConfig run = serving_config(AttentionChoice::Auto, FormulationChoice::Auto, ComputeDType::BF16,
                                 KvCacheLayout::Paged, KvCacheDType::FP8);
  run.kv_cache.pages = 7;
  CUDA_CHECK(cudaDeviceSynchronize());
  const int64_t before = device_memory_use().in_use_bytes;
  const CudaMlaLayer layer(m, whole(m), loaded.weights, run, limits_for(m, ragged_test_schedule()));
  EXPECT_EQ(layer.memory().total(), device_memory_use().in_use_bytes - before)
      << "a buffer the memory report leaves out";
  EXPECT_EQ(layer.cache().pool_bytes(), 7 * 4 * latent_row_bytes(LatentDType::FP8, 144, m.qk_rope_head_dim));
  EXPECT_GE(layer.memory().kv_cache_bytes, layer.cache().pool_bytes());
}

TEST_F(CudaServing, EmulatedWorldsOfTwoAndFourEqualWorldOneOnRaggedSteps) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 3, 32);
  const WeightsConfig weights = random_weights(WeightDType::BF16, 49);
  const std::vector<RaggedTestStep> steps = ragged_test_schedule();
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 50);
  for (const FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
    const RunConfig run = serving_config(AttentionChoice::Auto, formulation, ComputeDType::FP32, KvCacheLayout::Paged,
                                         KvCacheDType::Auto);
    const ServingRun world_one = cuda_steps(
        m, run, whole(m), load_layer_weights(weights, m, whole(m), ComputeDType::FP32).weights, tokens, steps);
    for (const int world : {2, 4}) {
      std::vector<std::vector<float>> summed;
      for (const std::vector<float>& y : world_one.y) summed.emplace_back(y.size(), 0.0f);
      for (int rank = 0; rank < world; ++rank) {
        const HeadShard shard = shard_heads(m.n_heads, world, rank, false);
        const ServingRun partial =
            cuda_steps(m, run, shard, load_layer_weights(weights, m, shard, ComputeDType::FP32).weights, tokens, steps);
        for (size_t i = 0; i < summed.size(); ++i)
          for (size_t j = 0; j < summed[i].size(); ++j) summed[i][j] += partial.y[i][j];
      }
      for (size_t i = 0; i < summed.size(); ++i) {
        EXPECT_LE(relative_l2_error(summed[i], world_one.y[i]), 1e-5)
            << "world " << world << " " << to_string(formulation) << " step " << i;
      }
    }
  }
}

}  // namespace
}  // namespace mla::test
