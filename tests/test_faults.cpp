// Rank failures and interrupted runs: a rank that exits, hangs or produces NaN (debug.fail), a
// rank killed or stopped from outside, a run killed while it writes y, a config that cannot fit
// in memory. Every case must end the whole job within a bounded time, with a non-zero exit, a
// message naming the rank, host and step, and no output file (or the old one, untouched).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/safetensors.h"
#include "tests/cli_fixture.h"

namespace mla::test {
namespace {

using Clock = std::chrono::steady_clock;

class Faults : public MlaRunCli {
 protected:
  std::string host() const {
    char name[256] = {};
    gethostname(name, sizeof(name) - 1);
    return name;
  }

  // Runs with debug.fail and parallel.timeout_s 2; returns the outcome and the seconds it took.
  std::pair<Outcome, double> run_fault(int ranks, const std::string& mode, int rank, int step) {
    const std::vector<std::string> sets = {"run.output=" + output(), "parallel.timeout_s=2", "parallel.uneven_heads=true",
                                           "debug={fail: {rank: " + std::to_string(rank) + ", step: " +
                                               std::to_string(step) + ", mode: " + mode + "}}"};
    std::string command = mla_run_command(write_config("fault.yaml", base_config()), sets);
    if (ranks > 1) command = mpiexec(ranks) + command;
    const auto started = Clock::now();
    Outcome outcome = run_command(command);
    return {outcome, std::chrono::duration<double>(Clock::now() - started).count()};
  }
};

struct FaultCase {
  int ranks;
  std::string mode;
  int rank;
};

void PrintTo(const FaultCase& c, std::ostream* out) { *out << c.ranks << " ranks, " << c.mode << " on rank " << c.rank; }

class DebugFail : public Faults, public testing::WithParamInterface<FaultCase> {};

TEST_P(DebugFail, EndsTheJobNamingRankHostAndStep) {
  const FaultCase& c = GetParam();
  const auto [outcome, seconds] = run_fault(c.ranks, c.mode, c.rank, 1);
  EXPECT_EQ(outcome.exit_code, 3) << outcome.err;
  EXPECT_NE(outcome.err.find("rank " + std::to_string(c.rank) + " (" + host() + ")"), std::string::npos) << outcome.err;
  EXPECT_NE(outcome.err.find("step 1"), std::string::npos) << outcome.err;
  EXPECT_FALSE(std::filesystem::exists(output()));
  // parallel.timeout_s is 2: a hang ends after it (plus the grace a waiting rank allows), the rest at once.
  EXPECT_LT(seconds, c.mode == "hang" ? 15.0 : 10.0) << outcome.err;
}

INSTANTIATE_TEST_SUITE_P(Modes, DebugFail,
                         testing::Values(FaultCase{1, "exit", 0}, FaultCase{1, "hang", 0}, FaultCase{1, "nan", 0},
                                         FaultCase{2, "exit", 1}, FaultCase{2, "hang", 0}, FaultCase{2, "hang", 1},
                                         FaultCase{2, "nan", 1}),
                         [](const testing::TestParamInfo<FaultCase>& param_info) {
                           const FaultCase& c = param_info.param;
                           return "world" + std::to_string(c.ranks) + "_" + c.mode + "_rank" + std::to_string(c.rank);
                         });

// A rank stopped (SIGSTOP) cannot report itself: the rank waiting for it does, after
// parallel.timeout_s and the grace period (or the start-up limit, inside MPI_Init), and the job ends. Stopped at 0.5, 1.5 and 2.5 s:
// during start-up or during the steps, whichever the run is in.
TEST_F(Faults, AStoppedRankIsReportedByItsPeer) {
  const std::vector<std::string> sets = {"run.output=" + output(), "parallel.timeout_s=2", "parallel.uneven_heads=true",
                                         // thousands of decode steps over a growing cache: a run of many
                                         // seconds, so every stop below lands inside it
                                         "model.kv_lora_rank=512", "model.max_seq_len=6002",
                                         "run.input={random: {batch: 2, tokens: 6002, seed: 4}}",
                                         "run.schedule={prefill: 2, decode_steps: 6000}"};
  for (const char* delay : {"0.5", "1.5", "2.5"}) {
    // mpiexec's children are the ranks: stop the first of them.
    const std::string script =
        write_config("stop.sh", mpiexec(2) + mla_run_command(write_config("stop.yaml", base_config()), sets) +
                                    " &\nlauncher=$!\nsleep " + delay +
                                    "\nkill -STOP $(pgrep -P $launcher | head -1)\nwait $launcher\n");
    const auto started = Clock::now();
    const Outcome outcome = run_command("bash " + script);
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    // Stopped inside MPI's start-up, each rank reports its own stall; later, the waiting peer
    // reports "a peer stalled or died". Either way one of the ranks' watchdogs ends the job.
    EXPECT_NE(outcome.err.find("stalled"), std::string::npos) << "stopped at " << delay << " s\n" << outcome.err;
    EXPECT_NE(outcome.exit_code, 0);
    EXPECT_FALSE(std::filesystem::exists(output()));
    // A stop during MPI's start-up waits for the start-up limit (at least 10 s), later ones for
    // parallel.timeout_s and the grace period.
    EXPECT_LT(seconds, 40.0);
  }
}

// SIGKILL at many moments of a run whose output is large enough to take a while to write: the
// path holds either the old file or a complete new one, never a partial file.
TEST_F(Faults, KilledAtAnyMomentLeavesTheOldOrTheNewOutput) {
  const std::string old_contents = "old contents";
  // y is 8 x 512 x 4096 floats, 64 MB: its write and fsync take a while.
  const std::vector<std::string> sets = {"run.output=" + output(), "model.dim=4096", "model.max_batch_size=8",
                                         "model.max_seq_len=512", "run.input={random: {batch: 8, tokens: 512, seed: 4}}",
                                         "run.schedule={prefill: 512}"};
  int saw_old = 0, saw_new = 0;
  for (int delay_ms = 0; delay_ms <= 1200; delay_ms += 100) {
    std::ofstream(output()) << old_contents;
    const std::string command = mla_run_command(write_config("kill.yaml", base_config()), sets);
    const pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", ("exec " + command + " > /dev/null 2>&1").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (read_text(output()) == old_contents) {
      ++saw_old;
    } else {
      // Not the old file: it must be the whole new one.
      EXPECT_EQ(SafetensorsFile::open(output()).info("y").shape, (std::vector<int64_t>{8, 512, 4096})) << delay_ms;
      ++saw_new;
    }
  }
  EXPECT_GT(saw_old, 0);
  std::printf("killed runs: %d left the old file, %d the complete new one\n", saw_old, saw_new);
}

TEST_F(Faults, AConfigThatCannotFitIsRefusedBeforeAllocating) {
  // A KV cache of 2^20 x 2^20 positions x 28 floats: far past any machine.
  expect_user_error(run(base_config(), {"model.max_batch_size=1048576", "model.max_seq_len=1048576", "run.input={random: {batch: 2, tokens: 8, seed: 4}}"}),
                    {"not enough memory", "kv cache", "MemAvailable"});
}

TEST_F(Faults, NonFiniteInputIsRefusedWithItsIndex) {
  std::vector<float> x(2 * 8 * 48, 0.25f);
  x[100] = INFINITY;
  write_safetensors_f32(dir_.file("x.safetensors"), {{"x", {2, 8, 48}, x.data()}});
  expect_user_error(run(base_config(), {"run.input=" + dir_.file("x.safetensors")}), {"tensor 'x'", "element 100", "not finite"});
  // run.check_finite: false lets it through (the output then carries the inf/nan).
  const Outcome unchecked = run(base_config(), {"run.input=" + dir_.file("x.safetensors"), "run.check_finite=false"});
  EXPECT_EQ(unchecked.exit_code, 0) << unchecked.err;
}

}  // namespace
}  // namespace mla::test
