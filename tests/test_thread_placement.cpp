// Where a rank's threads run (parallel/thread_placement.h): the choice of CPUs for every way a
// launcher may leave a rank, and pinning applied to the OpenMP pool that every kernel uses.
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <vector>

#include "parallel/thread_placement.h"

namespace mla::test {
namespace {

PlacementRequest request(int threads, std::vector<int> allowed, int node_cpus, int local_rank, int local_size) {
  PlacementRequest r;
  r.threads = threads;
  r.allowed = std::move(allowed);
  r.node_cpus = node_cpus;
  r.local_rank = local_rank;
  r.local_size = local_size;
  return r;
}

TEST(ThreadPlacement, OneRankTakesTheFirstAllowedCpus) {
  EXPECT_EQ(choose_thread_cpus(request(2, {0, 1, 2, 3}, 4, 0, 1)), (std::vector<int>{0, 1}));
  EXPECT_EQ(choose_thread_cpus(request(3, {4, 6, 9}, 16, 0, 1)), (std::vector<int>{4, 6, 9}));
}

TEST(ThreadPlacement, RanksBoundByTheLauncherUseTheirOwnCpus) {
  // mpirun --bind-to core / Slurm: each rank sees only its CPUs, so local rank does not shift them.
  EXPECT_EQ(choose_thread_cpus(request(2, {2, 3}, 4, 1, 2)), (std::vector<int>{2, 3}));
  EXPECT_EQ(choose_thread_cpus(request(1, {1}, 2, 1, 2)), (std::vector<int>{1}));
}

TEST(ThreadPlacement, RanksSharingAnUnboundNodeTakeDisjointSlices) {
  const std::vector<int> node = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(choose_thread_cpus(request(4, node, 8, 0, 2)), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(choose_thread_cpus(request(4, node, 8, 1, 2)), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(choose_thread_cpus(request(2, node, 8, 3, 4)), (std::vector<int>{6, 7}));
  // The slices do not all fit (run.threads too large, or more ranks than cores): no rank pins, not
  // even those whose slice fits, or they would share their cores with the floating ones.
  EXPECT_TRUE(choose_thread_cpus(request(3, node, 8, 2, 3)).empty());
  EXPECT_TRUE(choose_thread_cpus(request(3, node, 8, 0, 3)).empty());
  EXPECT_TRUE(choose_thread_cpus(request(1, {0, 1}, 2, 0, 4)).empty());
}

TEST(ThreadPlacement, MoreThreadsThanCpusAreNotPinned) {
  EXPECT_TRUE(choose_thread_cpus(request(3, {0, 1}, 2, 0, 1)).empty());
  EXPECT_TRUE(choose_thread_cpus(request(0, {0, 1}, 2, 0, 1)).empty());
  EXPECT_TRUE(choose_thread_cpus(request(1, {}, 2, 0, 1)).empty());
}

TEST(ThreadPlacement, DescribesCpusAsRanges) {
  EXPECT_EQ(describe_cpus({0, 1, 2, 3, 8}), "0-3,8");
  EXPECT_EQ(describe_cpus({5}), "5");
  EXPECT_EQ(describe_cpus({0, 2, 3, 4, 7, 8}), "0,2-4,7-8");
  EXPECT_EQ(describe_cpus({}), "");
}

// Each thread's own mask, read from inside a team of `threads`.
std::vector<std::vector<int>> team_masks(int threads) {
  std::vector<std::vector<int>> masks(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
  masks[static_cast<size_t>(omp_get_thread_num())] = allowed_cpus();
  return masks;
}

TEST(ThreadPlacement, PinsEachOpenMpThreadToItsCpuAndUnpinsThem) {
  const std::vector<int> allowed = allowed_cpus();
  ASSERT_FALSE(allowed.empty());
  const int threads = static_cast<int>(std::min<size_t>(allowed.size(), 2));
  const std::vector<int> cpus(allowed.begin(), allowed.begin() + threads);
  ASSERT_TRUE(pin_openmp_threads(cpus));
  const std::vector<std::vector<int>> pinned = team_masks(threads);
  for (int t = 0; t < threads; ++t)
    EXPECT_EQ(pinned[static_cast<size_t>(t)], std::vector<int>{cpus[static_cast<size_t>(t)]}) << t;
  // Parallel regions after the pinning (every kernel's, oneDNN's, OpenBLAS's) reuse the pinned threads.
  EXPECT_EQ(team_masks(threads), pinned);

  ASSERT_TRUE(unpin_openmp_threads(threads, allowed));
  for (const std::vector<int>& mask : team_masks(threads)) EXPECT_EQ(mask, allowed);
}

}  // namespace
}  // namespace mla::test
