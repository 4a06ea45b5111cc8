// The test suite's ranks-as-threads (tests/thread_group.h): its collectives against their
// definitions, a failing rank that ends the others' waits, and, through it, the CPU layer with its
// cache split over groups in one process (the MPI suite runs the same under mpirun).
#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/layer/runner.h"
#include "tests/test_util.h"
#include "tests/thread_group.h"

namespace mla::test {
namespace {

float tagged(int rank, int block, int64_t i) { return static_cast<float>(rank * 10000 + block * 100 + i); }

TEST(ThreadGroup, CollectivesMoveEveryRanksBlocks) {
  constexpr int kRanks = 3;
  constexpr int64_t kCount = 5;
  ThreadGroup group(kRanks);
  std::vector<std::vector<float>> gathered(kRanks), exchanged(kRanks), summed(kRanks);
  group.run([&](int r) {
    Communicator& comm = group.rank(r);
    EXPECT_EQ(comm.rank(), r);
    EXPECT_EQ(comm.world(), kRanks);
    std::vector<float> mine(kCount), blocks(kRanks * kCount);
    for (int64_t i = 0; i < kCount; ++i) mine[i] = tagged(r, 0, i);
    for (int block = 0; block < kRanks; ++block)
      for (int64_t i = 0; i < kCount; ++i) blocks[block * kCount + i] = tagged(r, block, i);
    gathered[r].resize(kRanks * kCount);
    comm.allgather(mine.data(), kCount, gathered[r].data());
    exchanged[r].resize(kRanks * kCount);
    comm.alltoall(blocks.data(), kCount, exchanged[r].data());
    summed[r] = mine;
    comm.allreduce_sum(summed[r].data(), kCount);
  });
  for (int r = 0; r < kRanks; ++r) {
    for (int source = 0; source < kRanks; ++source) {
      for (int64_t i = 0; i < kCount; ++i) {
        EXPECT_EQ(gathered[r][source * kCount + i], tagged(source, 0, i)) << r;
        EXPECT_EQ(exchanged[r][source * kCount + i], tagged(source, r, i)) << r;  // block r of the source's
      }
    }
    for (int64_t i = 0; i < kCount; ++i)
      EXPECT_EQ(summed[r][i], tagged(0, 0, i) + tagged(1, 0, i) + tagged(2, 0, i)) << r;
  }
}

TEST(ThreadGroup, AFailingRankEndsTheOthersWaits) {
  ThreadGroup group(2);
  try {
    group.run([&](int r) {
      if (r == 1) throw std::invalid_argument("rank 1 gave up");
      std::vector<float> values(4, 1.0f);
      group.rank(r).allreduce_sum(values.data(), 4);  // rank 1 never comes
    });
    FAIL() << "no exception";
  } catch (const std::invalid_argument& error) {
    EXPECT_EQ(std::string(error.what()), "rank 1 gave up");  // the cause, not the waiters' echo
  }
  // The same where the waiting rank is in its context group's collective, not the world's.
  ThreadWorld world(2, 2);
  const auto started = std::chrono::steady_clock::now();
  EXPECT_THROW(world.run([&](int r) {
    if (r == 1) throw std::invalid_argument("rank 1 gave up");
    std::vector<float> values(4, 1.0f), gathered(8);
    world.context_group(r).allgather(values.data(), 4, gathered.data());
  }),
               std::invalid_argument);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60)) << "the group's waiter was not woken";
}

// Worlds of threads in context groups: 4 ranks of one head in groups of 2 (ranks 0-1 and 2-3) and
// of 4; uneven heads, 4 over 3 ranks (2, 1, 1) in one group and 5 over 4 (2, 1 | 1, 1) in groups of
// 2; and with a budget (run.score_chunk_bytes) that takes the steps a token or two at a time through
// the gather and the exchange. The ragged schedule over a paged cache equals the whole layer in one
// thread.
TEST(ThreadGroup, CpuLayersSplittingTheCacheEqualTheWholeLayer) {
  struct Split {
    int world, group_size;
    int64_t heads;
    int64_t run_bytes = 0;  // run.score_chunk_bytes, 0: the default
  };
  for (const Split split :
       {Split{4, 2, 4}, Split{4, 4, 4}, Split{3, 3, 4}, Split{4, 2, 5}, Split{3, 3, 4, 2048}, Split{4, 2, 5, 2048}}) {
    for (const FormulationChoice formulation : {FormulationChoice::Absorb, FormulationChoice::Naive}) {
      const ModelArgs m = model_args(48, split.heads, 16, 24, 8, 6, 10, 3, 24);
      const WeightsConfig weights = random_weights(WeightDType::BF16, 31);
      const std::vector<std::vector<float>> tokens = slot_tokens(m, 32);
      const int world_size = split.world, group_size = split.group_size;
      RunConfig run;
      run.formulation = formulation;
      run.attention = formulation == FormulationChoice::Naive ? AttentionChoice::Standard : AttentionChoice::Fast;
      run.kv_cache.layout = KvCacheLayout::Paged;
      run.kv_cache.page_size = 2;
      if (split.run_bytes > 0) run.score_chunk_bytes = split.run_bytes;
      const std::string name = std::to_string(split.heads) + " heads over " + std::to_string(world_size) +
                               " ranks in groups of " + std::to_string(group_size) + ", " + to_string(formulation) +
                               ", runs within " + std::to_string(run.score_chunk_bytes) + " bytes";
      MlaLayer whole_layer(m, whole(m), load_layer_weights(weights, m, whole(m), run.compute_dtype).weights, run);
      SingleProcessCommunicator single;
      CpuStepExecutor whole_executor(whole_layer, single);
      const std::vector<std::vector<float>> want = run_ragged_steps(whole_executor, m, tokens, ragged_test_schedule());

      ThreadWorld world(world_size, group_size);
      std::vector<std::vector<std::vector<float>>> got(static_cast<size_t>(world_size));
      world.run([&](int r) {
        const HeadShard shard = shard_heads(m.n_heads, world_size, r, /*uneven=*/true);
        MlaLayer layer(m, shard, load_layer_weights(weights, m, shard, run.compute_dtype).weights, run,
                       &world.context_group(r));
        CpuStepExecutor executor(layer, world.rank(r));
        got[r] = run_ragged_steps(executor, m, tokens, ragged_test_schedule());
      });
      for (int r = 0; r < world_size; ++r) {
        ASSERT_EQ(got[r].size(), want.size()) << name;
        for (size_t i = 0; i < want.size(); ++i) {
          EXPECT_LE(relative_l2(got[r][i], to_double(want[i])), 1e-5) << name << ", rank " << r << ", step " << i;
          EXPECT_EQ(got[r][i], got[0][i]) << name << ": ranks differ, step " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mla::test
