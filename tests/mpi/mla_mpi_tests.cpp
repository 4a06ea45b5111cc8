// Tests that run inside an MPI job (ctest starts them with mpiexec -n 1, 2 and 4): each rank
// computes its head shard, the MPI communicator sums the partial outputs, and the result must equal
// the whole layer computed by one process, bitwise the same on every rank.
//
// Output: only rank 0 prints GoogleTest's report; a listener gathers every rank's failures after
// each test and rank 0 prints them, so a failure on rank 3 is seen and fails the job.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "parallel/mpi_session.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

MpiSession* g_session = nullptr;

// After each test, every rank's failure messages travel to rank 0, which prints them.
class GatherFailuresListener : public testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const testing::TestPartResult& result) override {
    if (result.failed()) {
      local_failures_ += std::string(result.file_name() ? result.file_name() : "?") + ":" +
                         std::to_string(result.line_number()) + ": " + result.summary() + "\n";
    }
  }

  void OnTestEnd(const testing::TestInfo& info) override {
    const std::vector<std::string> failures = g_session->all_gather(local_failures_);
    local_failures_.clear();
    if (g_session->rank() != 0) return;
    for (size_t rank = 0; rank < failures.size(); ++rank) {
      if (failures[rank].empty()) continue;
      failed_ranks_ += 1;
      std::printf("[rank %zu] %s.%s FAILED:\n%s", rank, info.test_suite_name(), info.name(), failures[rank].c_str());
    }
  }

  int failed_ranks() const { return failed_ranks_; }

 private:
  std::string local_failures_;
  int failed_ranks_ = 0;
};

ModelArgs model(int64_t heads) { return model_args(56, heads, 20, 28, 8, 6, 10, 2, 48); }

// Every phase: a prefill at 0, a chunk at an offset, decode steps.
const std::vector<int64_t> kSteps = {7, 4, 1, 1};

RunResult sharded_run(const ModelArgs& m, const RunConfig& run, const InputTensor& x, bool uneven) {
  const HeadShard shard = shard_heads(m.n_heads, g_session->world(), g_session->rank(), uneven);
  MlaLayer layer(m, shard,
                 load_layer_weights(random_weights(WeightDType::BF16, 4), m, shard, run.compute_dtype).weights, run);
  MpiCommunicator comm(*g_session);
  return run_schedule(layer, comm, x, kSteps, {}, {});
}

void expect_identical_on_every_rank(const std::vector<float>& y) {
  const std::string bytes(reinterpret_cast<const char*>(y.data()), y.size() * sizeof(float));
  const std::vector<std::string> all = g_session->all_gather(bytes);
  for (size_t rank = 1; rank < all.size(); ++rank)
    EXPECT_TRUE(all[rank] == all[0]) << "rank " << rank << "'s y differs";
}

TEST(MpiLayer, ShardsSumToTheWholeLayerOnEveryPath) {
  const ModelArgs m = model(4);
  const InputTensor x = random_input(m, 2, 13, 5);
  for (AttentionChoice attention : {AttentionChoice::Fast, AttentionChoice::Standard}) {
    for (FormulationChoice formulation : {FormulationChoice::Naive, FormulationChoice::Absorb}) {
      RunConfig run;
      run.attention = attention;
      run.formulation = formulation;
      const RunResult whole_run = layer_run(
          m, run, whole(m),
          load_layer_weights(random_weights(WeightDType::BF16, 4), m, whole(m), ComputeDType::FP32).weights, x, kSteps);
      const RunResult sharded = sharded_run(m, run, x, false);
      EXPECT_LE(relative_l2(sharded.y, to_double(whole_run.y)), 1e-5)
          << to_string(attention) << " " << to_string(formulation);
      expect_identical_on_every_rank(sharded.y);
    }
  }
}

// parallel.context_parallel: the group's ranks split every sequence's cache (position t on rank
// t % C), the heads still sharded over the whole job. Groups of the whole world, and of 2 where the
// world is 4; uniform steps (prefill, a chunk with history, decodes) and the ragged schedule
// (chunks beside decodes, idle sequences, sequences shorter than the group) over dense and
// paged caches in fp32 and fp8 rows, both paths and formulations, fp32 and bf16 compute: equal to
// the whole layer in one process.
TEST(MpiLayer, ContextParallelGroupsEqualTheWholeLayer) {
  const int world = g_session->world();
  std::vector<int> group_sizes = {world};
  if (world == 4) group_sizes.push_back(2);
  const ModelArgs m = model_args(56, 4, 20, 28, 8, 6, 10, 3, 48);
  const WeightsConfig weights = random_weights(WeightDType::BF16, 14);
  const HeadShard shard = shard_heads(m.n_heads, world, g_session->rank(), false);
  const InputTensor x = random_input(m, 2, 13, 15);
  const std::vector<std::vector<float>> tokens = slot_tokens(m, 16);
  MpiCommunicator world_comm(*g_session);
  for (const int group_size : group_sizes) {
    MpiCommunicator group(*g_session, group_size);
    for (int combination = 0; combination < 16; ++combination) {  // path x formulation x cache rows x compute
      const AttentionChoice attention = combination & 1 ? AttentionChoice::Standard : AttentionChoice::Fast;
      const FormulationChoice formulation = combination & 2 ? FormulationChoice::Naive : FormulationChoice::Absorb;
      const KvCacheDType cache_dtype = combination & 4 ? KvCacheDType::FP8 : KvCacheDType::Auto;
      const ComputeDType compute = combination & 8 ? ComputeDType::BF16 : ComputeDType::FP32;
      {
        RunConfig run;
        run.attention = attention;
        run.formulation = formulation;
        run.compute_dtype = compute;
        run.score_chunk_bytes = 4096;
        run.kv_cache.layout = cache_dtype == KvCacheDType::FP8 ? KvCacheLayout::Paged : KvCacheLayout::Dense;
        run.kv_cache.page_size = 2;
        run.kv_cache.dtype = cache_dtype;
        const std::string name = "group " + std::to_string(group_size) + " " + to_string(attention) + " " +
                                 to_string(formulation) + " " + to_string(cache_dtype) + " " + to_string(compute);
        const LayerWeights whole_weights = load_layer_weights(weights, m, whole(m), compute).weights;
        const LayerWeights rank_weights = load_layer_weights(weights, m, shard, compute).weights;
        // fp8 rows: each layer quantizes its own fp32 c_n, so a value at a tie may land on the
        // neighbouring code (tests/test_ragged.cpp says more).
        // bf16: SPEC.md's bound (the group's partial outputs are rounded to bf16 before the merge).
        const double bound = compute == ComputeDType::BF16 ? 2e-2 : cache_dtype == KvCacheDType::FP8 ? 1e-4 : 1e-5;

        const RunResult whole_uniform = layer_run(m, run, whole(m), whole_weights, x, kSteps);
        MlaLayer uniform_layer(m, shard, rank_weights, run, &group);
        const RunResult split_uniform = run_schedule(uniform_layer, world_comm, x, kSteps, {}, {});
        EXPECT_LE(relative_l2(split_uniform.y, to_double(whole_uniform.y)), bound) << name << ", uniform";
        expect_identical_on_every_rank(split_uniform.y);

        MlaLayer whole_layer(m, whole(m), whole_weights, run);
        SingleProcessCommunicator single;
        CpuStepExecutor whole_executor(whole_layer, single);
        const std::vector<std::vector<float>> want =
            run_ragged_steps(whole_executor, m, tokens, ragged_test_schedule());
        MlaLayer ragged_layer(m, shard, rank_weights, run, &group);
        CpuStepExecutor split_executor(ragged_layer, world_comm);
        const std::vector<std::vector<float>> got = run_ragged_steps(split_executor, m, tokens, ragged_test_schedule());
        for (size_t i = 0; i < want.size(); ++i) {
          EXPECT_LE(relative_l2(got[i], to_double(want[i])), bound) << name << ", ragged step " << i;
        }
        // Each rank keeps about 1/group of the rows: its pool is the whole one's share.
        EXPECT_EQ(ragged_layer.cache().shape().max_seq_len, (m.max_seq_len + group_size - 1) / group_size) << name;
      }
    }
  }
}

TEST(MpiLayer, UnevenShardsAndBf16) {
  const ModelArgs m = model(5);
  const InputTensor x = random_input(m, 2, 13, 6);
  RunConfig run;
  run.compute_dtype = ComputeDType::BF16;
  const LayerWeights weights =
      load_layer_weights(random_weights(WeightDType::BF16, 4), m, whole(m), ComputeDType::BF16).weights;
  const RunResult whole_run = layer_run(m, run, whole(m), weights, x, kSteps);
  const RunResult sharded = sharded_run(m, run, x, true);
  EXPECT_LE(relative_l2(sharded.y, to_double(whole_run.y)), 2e-2);
  expect_identical_on_every_rank(sharded.y);
}

TEST(MpiCommunicator, SumsExactlyAndLargeCounts) {
  MpiCommunicator comm(*g_session);
  std::vector<float> values(100003);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((g_session->rank() + 1) * (i % 7));
  comm.allreduce_sum(values.data(), static_cast<int64_t>(values.size()));
  const int world = g_session->world();
  for (size_t i = 0; i < values.size(); i += 997) {
    EXPECT_EQ(values[i], static_cast<float>(world * (world + 1) / 2 * (i % 7))) << i;
  }
}

// Rank r's value i: distinct over ranks, blocks and positions.
float tagged(int rank, int block, int64_t i) { return static_cast<float>(rank * 100000 + block * 1000 + i); }

// The collectives context parallelism uses, over the whole job and within groups of 2 consecutive
// ranks (where the world is even): an all-gather puts every rank's block in rank order, an
// all-to-all delivers block r of each rank to rank r.
TEST(MpiCommunicator, AllGatherAndAllToAllOverTheJobAndWithinGroups) {
  const int64_t count = 37;
  std::vector<int> group_sizes = {1, g_session->world()};
  if (g_session->world() % 2 == 0) group_sizes.push_back(2);
  for (const int group_size : group_sizes) {
    MpiCommunicator comm(*g_session, group_size);
    ASSERT_EQ(comm.world(), group_size);
    ASSERT_EQ(comm.rank(), g_session->rank() % group_size);
    const int first_rank = g_session->rank() - comm.rank();  // the group's ranks are consecutive
    std::vector<float> mine(static_cast<size_t>(count)), gathered(static_cast<size_t>(group_size * count));
    for (int64_t i = 0; i < count; ++i) mine[i] = tagged(g_session->rank(), 0, i);
    comm.allgather(mine.data(), count, gathered.data());
    for (int r = 0; r < group_size; ++r) {
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(gathered[r * count + i], tagged(first_rank + r, 0, i)) << "group " << group_size << " block " << r;
      }
    }
    std::vector<float> outgoing(static_cast<size_t>(group_size * count)), incoming(outgoing.size());
    for (int to = 0; to < group_size; ++to) {
      for (int64_t i = 0; i < count; ++i) outgoing[to * count + i] = tagged(g_session->rank(), to, i);
    }
    comm.alltoall(outgoing.data(), count, incoming.data());
    for (int from = 0; from < group_size; ++from) {
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(incoming[from * count + i], tagged(first_rank + from, comm.rank(), i))
            << "group " << group_size << " from " << from;
      }
    }
    // A sum within the group: the group's ranks only.
    std::vector<float> one = {static_cast<float>(g_session->rank())};
    comm.allreduce_sum(one.data(), 1);
    EXPECT_EQ(one[0], static_cast<float>(group_size * first_rank + group_size * (group_size - 1) / 2));
  }
  EXPECT_THROW(MpiCommunicator(*g_session, g_session->world() + 1), std::invalid_argument);
}

TEST(MpiSession, OneRanksFailureReachesEveryRankWithItsReason) {
  const int last = g_session->world() - 1;
  std::string failure;
  const bool ok = g_session->all_ok(g_session->rank() != last, "cannot open ckpt/x.safetensors", &failure);
  EXPECT_FALSE(ok);
  EXPECT_NE(failure.find("cannot open ckpt/x.safetensors"), std::string::npos) << failure;
  if (g_session->world() > 1) {
    EXPECT_NE(failure.find("rank " + std::to_string(last)), std::string::npos) << failure;
  }
  std::string unused;
  EXPECT_TRUE(g_session->all_ok(true, "", &unused));
}

}  // namespace
}  // namespace mla::test

int main(int argc, char** argv) {
  mla::MpiSession session(&argc, &argv);
  mla::test::g_session = &session;
  testing::InitGoogleTest(&argc, argv);
  testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
  if (session.rank() != 0) delete listeners.Release(listeners.default_result_printer());
  auto* gather = new mla::test::GatherFailuresListener;  // owned by gtest
  listeners.Append(gather);
  const int local_result = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_CHECK(MPI_Allreduce(&local_result, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  if (session.rank() == 0 && any_failed) {
    std::printf("FAILED on %d rank-test(s) of %d ranks (see the [rank N] lines above)\n", gather->failed_ranks(),
                session.world());
  }
  return any_failed;
}
