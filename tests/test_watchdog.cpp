// The watchdog that keeps ranks from waiting forever: it stays quiet while progress is reported,
// ends the process (exit 3, one line naming the rank and the activity) when it stops, and gives a
// rank waiting in a collective a grace period so that the stalled peer reports first.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "parallel/watchdog.h"

namespace mla {
namespace {

using std::chrono::milliseconds;

TEST(WatchdogDeathTest, StallEndsTheProcessNamingRankAndActivity) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 2 (node-b)");
        watchdog.progress("step 7");
        std::this_thread::sleep_for(milliseconds(3000));
      },
      testing::ExitedWithCode(kRankFailureExitCode), "mla_run: error: rank 2 \\(node-b\\): step 7: stalled, no progress for 0\\.[2-9]");
}

TEST(WatchdogDeathTest, AWaitingRankGetsTheGracePeriodThenReportsItsPeer) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 0 (node-a)");
        watchdog.progress("step 1");
        watchdog.enter_collective("all-reduce");
        std::this_thread::sleep_for(milliseconds(10000));
      },
      testing::ExitedWithCode(kRankFailureExitCode), "the all-reduce has waited 2\\.[2-9] s .*a peer stalled or died");
}

TEST(Watchdog, ProgressKeepsItQuietAndZeroTurnsItOff) {
  {
    Watchdog watchdog(0.3, "mla_run", "rank 0 (host)");
    for (int step = 0; step < 10; ++step) {
      watchdog.progress("step " + std::to_string(step));
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  Watchdog off(Watchdog::kDefaultTimeoutSeconds, "mla_run", "rank 0 (host)");
  off.set_timeout(0.0);
  std::this_thread::sleep_for(milliseconds(300));
  SUCCEED() << "still running: progress and timeout 0 never fire";
}

}  // namespace
}  // namespace mla
