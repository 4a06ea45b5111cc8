// The watchdog that keeps ranks from waiting forever: it stays quiet while progress is reported,
// ends the process (exit 3, one line naming the rank and the activity) when it stops, and gives a
// rank waiting in a collective a grace period so that the stalled peer reports first.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "parallel/watchdog.h"

namespace mla {
namespace {

using std::chrono::milliseconds;

TEST(WatchdogDeathTest, StallEndsTheProcessNamingRankAndActivity) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 2 (node-b)");
        watchdog.end_startup();
        watchdog.progress("step 7");
        std::this_thread::sleep_for(milliseconds(3000));
      },
      testing::ExitedWithCode(kRankFailureExitCode),
      "mla_run: error: rank 2 \\(node-b\\): step 7: stalled, no progress for 0\\.[2-9]");
}

TEST(WatchdogDeathTest, AWaitingRankGetsTheGracePeriodThenReportsItsPeer) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 0 (node-a)");
        watchdog.end_startup();
        watchdog.progress("step 1");
        watchdog.enter_collective("all-reduce");
        std::this_thread::sleep_for(milliseconds(10000));
      },
      testing::ExitedWithCode(kRankFailureExitCode), "the all-reduce has waited 2\\.[2-9] s .*a peer stalled or died");
}

// MPI's start-up gets at least Watchdog::kMinStartupSeconds, and the message says both numbers.
TEST(WatchdogDeathTest, TheStartUpFloorIsNamedBesideTheConfiguredLimit) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 1 (node-a)");
        watchdog.progress("MPI start-up");
        std::this_thread::sleep_for(milliseconds(30000));
      },
      testing::ExitedWithCode(kRankFailureExitCode),
      "MPI start-up: stalled, no progress for 10\\.[0-9] s \\(parallel.timeout_s 0.2; MPI's start-up gets at least 10 "
      "s\\)");
}

// A stall of a rank whose run has finished (its output committed) ends it with exit 0: the run's
// result is complete. Before that, the hook set for it runs (it removes temporary files).
TEST(WatchdogDeathTest, AfterTheRunFinishedAStallEndsTheRankWithSuccess) {
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 0 (node-a)");
        watchdog.end_startup();
        bool committed = false;
        watchdog.finish_run([&] { committed = true; });
        if (!committed) std::_Exit(9);
        watchdog.progress("MPI_Finalize");
        std::this_thread::sleep_for(milliseconds(10000));
      },
      testing::ExitedWithCode(0), "after the run finished .*its result is complete");
}

TEST(WatchdogDeathTest, AStallRunsTheBeforeExitHook) {
  const std::string marker = testing::TempDir() + "/watchdog_before_exit_marker";
  std::ofstream(marker) << "x";
  EXPECT_EXIT(
      {
        Watchdog watchdog(0.2, "mla_run", "rank 0 (node-a)");
        watchdog.end_startup();
        watchdog.set_before_exit([&] { std::filesystem::remove(marker); });
        watchdog.progress("step 0");
        std::this_thread::sleep_for(milliseconds(10000));
      },
      testing::ExitedWithCode(kRankFailureExitCode), "step 0: stalled");
  EXPECT_FALSE(std::filesystem::exists(marker));
}

// debug.progress_file: the rank's pid and its activity, rewritten at every report.
TEST(Watchdog, TheProgressFileHoldsThePidAndTheActivity) {
  const std::string path = testing::TempDir() + "/watchdog_progress";
  Watchdog watchdog(0.0, "mla_run", "rank 0 (host)");
  watchdog.set_progress_file(path);
  watchdog.progress("step 3");
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  EXPECT_EQ(line, "pid " + std::to_string(getpid()) + ": step 3");
}

TEST(Watchdog, ProgressKeepsItQuietAndZeroTurnsItOff) {
  {
    // Reports every 50 ms against a limit of 2 s: forty times the interval, so a loaded machine
    // that delays a report does not end the test.
    Watchdog watchdog(2.0, "mla_run", "rank 0 (host)");
    watchdog.end_startup();
    for (int step = 0; step < 10; ++step) {
      watchdog.progress("step " + std::to_string(step));
      std::this_thread::sleep_for(milliseconds(50));
    }
  }
  Watchdog off(Watchdog::kDefaultTimeoutSeconds, "mla_run", "rank 0 (host)");
  off.end_startup();
  off.set_timeout(0.0);
  std::this_thread::sleep_for(milliseconds(300));
  SUCCEED() << "still running: progress and timeout 0 never fire";
}

}  // namespace
}  // namespace mla
