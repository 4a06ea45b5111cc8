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

#include "runtime/io/safetensors.h"
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

  // A run whose y is 8 x 512 x 4096 floats, 64 MB: writing and fsyncing it takes a while.
  std::vector<std::string> large_output_sets() const {
    return {"run.output=" + output(),
            "model.dim=4096",
            "model.max_batch_size=8",
            "model.max_seq_len=512",
            "run.input={random: {batch: 8, tokens: 512, seed: 4}}",
            "run.schedule={prefill: 512}"};
  }

  // Runs with debug.fail and parallel.timeout_s 2 (context_group > 1: 4 heads, the cache split over
  // groups of that many ranks); returns the outcome and the seconds it took.
  std::pair<Outcome, double> run_fault(int ranks, const std::string& mode, int rank, int step, int context_group = 1) {
    std::vector<std::string> sets = {
        "run.output=" + output(), "parallel.timeout_s=2", "parallel.uneven_heads=true",
        "debug={fail: {rank: " + std::to_string(rank) + ", step: " + std::to_string(step) + ", mode: " + mode + "}}"};
    if (context_group > 1) {
      sets.push_back("model.n_heads=4");
      sets.push_back("parallel.context_parallel=" + std::to_string(context_group));
    }
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
  int context_group = 1;  // parallel.context_parallel: the ranks exchange attention inside each step
};

void PrintTo(const FaultCase& c, std::ostream* out) {
  *out << c.ranks << " ranks, " << c.mode << " on rank " << c.rank << ", context groups of " << c.context_group;
}

class DebugFail : public Faults, public testing::WithParamInterface<FaultCase> {};

TEST_P(DebugFail, EndsTheJobNamingRankHostAndStep) {
  const FaultCase& c = GetParam();
  const auto [outcome, seconds] = run_fault(c.ranks, c.mode, c.rank, 1, c.context_group);
  EXPECT_EQ(outcome.exit_code, 3) << outcome.err;
  EXPECT_NE(outcome.err.find("rank " + std::to_string(c.rank) + " (" + host() + ")"), std::string::npos) << outcome.err;
  EXPECT_NE(outcome.err.find("step 1"), std::string::npos) << outcome.err;
  EXPECT_FALSE(std::filesystem::exists(output()));
  // parallel.timeout_s is 2: a hang ends after it (plus the grace a waiting rank allows), the rest at
  // once. The bound only catches a job that does not end; it leaves room for a loaded machine.
  EXPECT_LT(seconds, 60.0) << outcome.err;
}

INSTANTIATE_TEST_SUITE_P(Modes, DebugFail,
                         testing::Values(FaultCase{1, "exit", 0}, FaultCase{1, "hang", 0}, FaultCase{1, "nan", 0},
                                         FaultCase{2, "exit", 1}, FaultCase{2, "hang", 0}, FaultCase{2, "hang", 1},
                                         FaultCase{2, "nan", 1}, FaultCase{2, "exit", 1, 2},
                                         FaultCase{2, "hang", 1, 2}),
                         [](const testing::TestParamInfo<FaultCase>& param_info) {
                           const FaultCase& c = param_info.param;
                           return "world" + std::to_string(c.ranks) + "_" + c.mode + "_rank" + std::to_string(c.rank) +
                                  (c.context_group > 1 ? "_context" + std::to_string(c.context_group) : "");
                         });

// A command started in the background, in a process group of its own (so that it and what it
// started can be killed together); its output goes to `out` and `err`.
class Background {
 public:
  Background(const std::string& command, const std::string& out, const std::string& err) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", (command + " > " + out + " 2> " + err).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == 0) return true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    pid_ = -1;
    return false;
  }
  // The exit code, or -1 when it had not ended after `limit`.
  int wait(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    while (running()) {
      if (Clock::now() > deadline) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return exit_code_;
  }

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

// The pid in a rank's debug.progress_file once its line contains `state`; -1 when the job ends
// first or after `limit`.
pid_t wait_for_state(Background& job, const std::string& progress_file, const std::string& state,
                     std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline && job.running()) {
    const std::string line = read_text(progress_file);
    if (line.find(state) != std::string::npos && line.starts_with("pid ")) return std::stoi(line.substr(4));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

// A rank stopped (SIGSTOP) cannot report itself: the rank waiting for it does, and the job ends.
// Rank 0 is stopped once it has reached the state under test, as its debug.progress_file says:
// in MPI's start-up, and while every rank is held at step 1 (debug.hold), which the run never
// leaves by itself, so the stop lands where it is meant to however slow the machine is.
TEST_F(Faults, AStoppedRankIsReportedByItsPeer) {
  struct Moment {
    std::string state;  // in rank 0's progress file
    int limit_s;        // how long the peer waits: its limit there and the grace period
  };
  for (const Moment& moment : {Moment{"MPI start-up", 10 + 2}, Moment{"held at step 1", 2 + 2}}) {
    std::filesystem::remove(dir_.file("progress.rank0"));
    const std::vector<std::string> sets = {"run.output=" + output(), "parallel.timeout_s=2",
                                           "parallel.uneven_heads=true",
                                           "debug={hold: {step: 1}, progress_file: " + dir_.file("progress") + "}"};
    Background job(mpiexec(2) + mla_run_command(write_config("stop.yaml", base_config()), sets), dir_.file("out.txt"),
                   dir_.file("err.txt"));
    const pid_t rank0 = wait_for_state(job, dir_.file("progress.rank0"), moment.state, std::chrono::seconds(120));
    ASSERT_GT(rank0, 0) << "rank 0 never reached '" << moment.state << "':\n" << read_text(dir_.file("err.txt"));
    ASSERT_EQ(kill(rank0, SIGSTOP), 0);
    const auto stopped = Clock::now();
    // Bounded: the peer's limit and grace, and mpirun's time to end the job; -1 means it did not end.
    const int exit_code = job.wait(std::chrono::seconds(moment.limit_s + 60));
    const double seconds = std::chrono::duration<double>(Clock::now() - stopped).count();
    kill(rank0, SIGKILL);  // if mpirun left it stopped
    const std::string err = read_text(dir_.file("err.txt"));
    EXPECT_NE(exit_code, -1) << "the job did not end " << seconds << " s after rank 0 stopped at " << moment.state;
    EXPECT_NE(exit_code, 0) << err;
    // The waiting rank reports "... stalled" (its own start-up) or "... a peer stalled or died".
    EXPECT_NE(err.find("rank 1"), std::string::npos) << moment.state << "\n" << err;
    EXPECT_NE(err.find("stalled"), std::string::npos) << moment.state << "\n" << err;
    // Not before the peer's limit: it waited for the stopped rank, as it should.
    EXPECT_GE(seconds, moment.limit_s - 2.5) << moment.state << "\n" << err;
    EXPECT_FALSE(std::filesystem::exists(output()));
  }
}

// A rank of a context group killed (SIGKILL) while the group is inside a step: the job ends
// within the timeout and its grace, non-zero, naming the rank, and writes nothing. The ranks are
// held at step 2 (after a prefill and a decode that filled both shares of the cache), so the kill
// lands inside the run however slow the machine is.
TEST_F(Faults, AKilledRankOfAContextGroupEndsTheJob) {
  const std::vector<std::string> sets = {"run.output=" + output(), "parallel.timeout_s=2", "model.n_heads=4",
                                         "parallel.context_parallel=2",
                                         "debug={hold: {step: 2}, progress_file: " + dir_.file("progress") + "}"};
  Background job(mpiexec(2) + mla_run_command(write_config("kill_group.yaml", base_config()), sets),
                 dir_.file("out.txt"), dir_.file("err.txt"));
  const pid_t rank1 = wait_for_state(job, dir_.file("progress.rank1"), "held at step 2", std::chrono::seconds(120));
  ASSERT_GT(rank1, 0) << "rank 1 never reached step 2:\n" << read_text(dir_.file("err.txt"));
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  const auto killed = Clock::now();
  const int exit_code = job.wait(std::chrono::seconds(2 + 60));
  const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
  const std::string err = read_text(dir_.file("err.txt")) + read_text(dir_.file("out.txt"));
  EXPECT_NE(exit_code, -1) << "the job did not end " << seconds << " s after rank 1 was killed";
  EXPECT_NE(exit_code, 0) << err;
  EXPECT_NE(err.find("rank 1"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(output()));
}

// A run ended by its own watchdog while it writes y (parallel.timeout_s far below the write's
// time) reports failure and leaves the old file and no temporary; a run that reports success has
// written the complete new file. The rename is the commit.
TEST_F(Faults, AWatchdogFiringWhileWritingLeavesTheOldOutput) {
  const std::string old_contents = "old contents";
  const std::vector<std::string> sets = large_output_sets();
  int failed = 0, succeeded = 0;
  for (const char* timeout : {"0.05", "0.2", "0.5", "1", "2"}) {
    std::ofstream(output()) << old_contents;
    std::vector<std::string> with_timeout = sets;
    with_timeout.push_back(std::string("parallel.timeout_s=") + timeout);
    const Outcome outcome = run(base_config(), with_timeout);
    if (outcome.exit_code == 0) {
      ++succeeded;
      EXPECT_EQ(SafetensorsFile::open(output()).info("y").shape, (std::vector<int64_t>{8, 512, 4096})) << timeout;
    } else {
      ++failed;
      EXPECT_EQ(outcome.exit_code, 3) << timeout << ": " << outcome.err;
      EXPECT_EQ(read_text(output()), old_contents) << timeout << ": a failed run replaced the output";
    }
    expect_no_temporaries();
  }
  EXPECT_GT(failed, 0) << "no run was ended by its watchdog: the test tested nothing";
  std::printf("watchdog while writing: %d runs failed (old file kept), %d succeeded\n", failed, succeeded);
}

// SIGKILL at many moments of a run whose output is large enough to take a while to write: the
// path holds either the old file or a complete new one, never a partial file.
TEST_F(Faults, KilledAtAnyMomentLeavesTheOldOrTheNewOutput) {
  const std::string old_contents = "old contents";
  const std::vector<std::string> sets = large_output_sets();
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
  expect_user_error(run(base_config(), {"model.max_batch_size=1048576", "model.max_seq_len=1048576",
                                        "run.input={random: {batch: 2, tokens: 8, seed: 4}}"}),
                    {"not enough memory", "kv cache", "MemAvailable"});
}

TEST_F(Faults, NonFiniteInputIsRefusedWithItsIndex) {
  std::vector<float> x(2 * 8 * 48, 0.25f);
  x[100] = INFINITY;
  write_safetensors_f32(dir_.file("x.safetensors"), {{"x", {2, 8, 48}, x.data()}});
  expect_user_error(run(base_config(), {"run.input=" + dir_.file("x.safetensors")}),
                    {"tensor 'x'", "element 100", "not finite"});
  // run.check_finite: false lets it through (the output then carries the inf/nan).
  const Outcome unchecked = run(base_config(), {"run.input=" + dir_.file("x.safetensors"), "run.check_finite=false"});
  EXPECT_EQ(unchecked.exit_code, 0) << unchecked.err;
}

}  // namespace
}  // namespace mla::test
