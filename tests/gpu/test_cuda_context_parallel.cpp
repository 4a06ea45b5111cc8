// The CUDA layer with its cache split over a context group (docs/design.md, The latent cache split
// across ranks): ranks as threads of this process (tests/thread_group.h), each with its own layer
// and stream on the one GPU, their gathers, exchanges and sums staged through host memory as
// parallel.communicator: mpi does. Against the CPU layer holding every head and the whole cache.
// Bounds: bound_for (tests/gpu/layer_test_util.h).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/host_staged_communicator.h"
#include "runtime/base/errors.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/mla_layer_cuda.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/layer_test_util.h"
#include "tests/test_util.h"
#include "tests/thread_group.h"

namespace mla::test {
namespace {

// Every rank's outputs of the steps: `world` threads, each holding its share of the heads, in context
// groups of group_size consecutive ranks.
std::vector<std::vector<std::vector<float>>> split_cuda_steps(const ModelArgs& m, const RunConfig& run,
                                                              const WeightsConfig& weights, int world, int group_size,
                                                              const std::vector<std::vector<float>>& tokens,
                                                              const std::vector<RaggedTestStep>& steps) {
  ThreadWorld threads(world, group_size);
  std::vector<std::vector<std::vector<float>>> outputs(static_cast<size_t>(world));
  threads.run([&](int r) {
    CUDA_CHECK(cudaSetDevice(0));  // the current device is per thread
    const HeadShard shard = shard_heads(m.n_heads, world, r, /*uneven=*/true);
    const LayerWeights rank_weights = load_layer_weights(weights, m, shard, run.compute_dtype).weights;
    CudaMlaLayer layer(m, shard, rank_weights, run, limits_for(m, steps), group_size);
    EXPECT_EQ(layer.cache().shape().max_seq_len, (m.max_seq_len + group_size - 1) / group_size)
        << "each rank keeps its share of the rows";
    HostStagedCommunicator sum(threads.rank(r), layer.stream());
    HostStagedCommunicator group(threads.context_group(r), layer.stream());
    layer.set_context_group(&group);
    CudaStepExecutor executor(layer, sum, {}, 0);
    outputs[r] = run_ragged_steps(executor, m, tokens, steps);
  });
  return outputs;
}

using CudaContextParallel = GpuTest;

// Worlds of 2 and 4 in groups of 2 and 4, and of 3 in one group (4 heads: 2, 1, 1, uneven): the
// ragged schedule (prefills beside decodes, idle sequences, sequences shorter than the group)
// through dense and paged caches of fp32, bf16 and fp8 rows, fp32 and bf16 compute, against the
// CPU layer with the whole cache; every rank's output bit for bit the same.
TEST_F(CudaContextParallel, GroupsEqualTheWholeCpuLayerOnRaggedSteps) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 3, 32);
  const WeightsConfig weights = random_weights(WeightDType::BF16, 61);
  const std::vector<RaggedTestStep> steps = ragged_test_schedule();
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 62);
  struct Split {
    int world, group_size;
  };
  for (const ComputeDType compute : {ComputeDType::FP32, ComputeDType::BF16}) {
    for (const KvCacheDType cache_dtype : {KvCacheDType::Auto, KvCacheDType::BF16, KvCacheDType::FP8}) {
      RunConfig run;
      run.compute_dtype = compute;
      run.formulation = FormulationChoice::Absorb;
      run.kv_cache.layout = cache_dtype == KvCacheDType::Auto ? KvCacheLayout::Dense : KvCacheLayout::Paged;
      run.kv_cache.page_size = 2;
      run.kv_cache.dtype = cache_dtype;
      MlaLayer whole_layer(m, whole(m), load_layer_weights(weights, m, whole(m), compute).weights, run);
      SingleProcessCommunicator single;
      CpuStepExecutor whole_executor(whole_layer, single);
      const std::vector<std::vector<float>> want = run_ragged_steps(whole_executor, m, tokens, steps);
      for (const Split split : {Split{2, 2}, Split{4, 2}, Split{4, 4}, Split{3, 3}}) {
        const std::string name = "world " + std::to_string(split.world) + " groups of " +
                                 std::to_string(split.group_size) + " " + to_string(compute) + " " +
                                 to_string(cache_dtype);
        const auto got = split_cuda_steps(m, run, weights, split.world, split.group_size, tokens, steps);
        for (int r = 0; r < split.world; ++r) {
          ASSERT_EQ(got[r].size(), want.size()) << name;
          for (size_t i = 0; i < want.size(); ++i) {
            EXPECT_LE(relative_l2_error(got[r][i], want[i]), bound_for(compute, cache_dtype))
                << name << " rank " << r << " step " << i;
            EXPECT_EQ(got[r][i], got[0][i]) << name << ": ranks differ at step " << i;
          }
        }
      }
    }
  }
}

// Long enough that the split-KV kernel divides a rank's share among blocks (a merge inside each
// rank's partial attention, then the group's merge): one sequence prefilled in chunks of 96, then
// decoded, at world 2 in one group; and with a budget (run.score_chunk_bytes) that takes each chunk
// through the gather and the exchange in runs of about 30 tokens.
TEST_F(CudaContextParallel, LongSequencesSplitTheirShareAmongBlocksToo) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 1, 512);
  const WeightsConfig weights = random_weights(WeightDType::BF16, 63);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 64);
  std::vector<RaggedTestStep> steps;
  for (int64_t start = 0; start < 480; start += 96) steps.push_back({{0, start, 96}});
  for (int64_t pos = 480; pos < 484; ++pos) steps.push_back({{0, pos, 1}});
  RunConfig run;
  run.formulation = FormulationChoice::Absorb;
  MlaLayer whole_layer(m, whole(m), load_layer_weights(weights, m, whole(m), run.compute_dtype).weights, run);
  SingleProcessCommunicator single;
  CpuStepExecutor whole_executor(whole_layer, single);
  const std::vector<std::vector<float>> want = run_ragged_steps(whole_executor, m, tokens, steps);
  for (const int64_t run_bytes : {run.score_chunk_bytes, int64_t{64} << 10}) {
    RunConfig split_run = run;
    split_run.score_chunk_bytes = run_bytes;
    const auto got = split_cuda_steps(m, split_run, weights, 2, 2, tokens, steps);
    for (int r = 0; r < 2; ++r) {
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_LE(relative_l2_error(got[r][i], want[i]), 1e-5)
            << "runs within " << run_bytes << " bytes, rank " << r << " step " << i;
      }
    }
  }
}

// What the split cache cannot serve on the GPU is refused before any device work, naming the key.
// (No device needed: the checks come first.)
TEST(CudaContextParallelConfig, TheNaiveFormulationAndTheStandardPathAreRefusedByKey) {
  const ModelArgs m = model_args(72, 4, 24, 36, 12, 6, 10, 3, 32);
  CudaLayerLimits limits;
  limits.max_batch = 3;
  limits.max_step_len = 8;
  limits.max_kv_len = 32;
  const LayerWeights weights =
      load_layer_weights(random_weights(WeightDType::BF16, 65), m, whole(m), ComputeDType::FP32).weights;
  for (const bool naive : {true, false}) {
    RunConfig run;
    run.formulation = naive ? FormulationChoice::Naive : FormulationChoice::Absorb;
    run.attention = naive ? AttentionChoice::Auto : AttentionChoice::Standard;
    try {
      CudaMlaLayer layer(m, whole(m), weights, run, limits, 2);
      FAIL() << "accepted";
    } catch (const UserError& error) {
      EXPECT_NE(std::string(error.what()).find(naive ? "run.formulation: naive" : "run.attention: standard"),
                std::string::npos)
          << error.what();
    }
  }
}

}  // namespace
}  // namespace mla::test
