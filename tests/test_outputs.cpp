// What no run may do to the files around it: replace a device node, a FIFO or a directory given
// as an output, overwrite a file it reads (through a symbolic or a hard link too), let two outputs
// share a file, read a config without bound, or leave a temporary file behind. Every command that
// writes (mla_run, mla_bench, mla_allreduce_bench, mla_cuda_bench) refuses before any work, exit
// 2, naming the key and the paths, and every file involved is unchanged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"
#include "runtime/base/user_files.h"
#include "runtime/io/safetensors.h"
#include "tests/cli_fixture.h"

namespace mla::test {
namespace {

namespace fs = std::filesystem;

// The kind and content of a path as it stands, to compare before and after a refused run.
struct FileState {
  fs::file_type type = fs::file_type::none;
  std::string contents;  // regular files only
  bool operator==(const FileState&) const = default;
};

FileState state_of(const std::string& path) {
  FileState state;
  std::error_code error;
  state.type = fs::symlink_status(path, error).type();
  if (state.type == fs::file_type::regular) state.contents = read_text(path);
  return state;
}

class Outputs : public MlaRunCli {
 protected:
  // Runs mla_run with `sets` and expects a refusal naming every word, with `paths` unchanged.
  void expect_refused(const std::vector<std::string>& sets, const std::vector<std::string>& words,
                      const std::vector<std::string>& paths) {
    std::vector<FileState> before;
    for (const std::string& path : paths) before.push_back(state_of(path));
    const Outcome outcome = run(base_config(), sets);
    EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
    for (const std::string& word : words)
      EXPECT_NE(outcome.err.find(word), std::string::npos) << word << "\n" << outcome.err;
    EXPECT_EQ(outcome.out.find("prefill"), std::string::npos) << "refused only after the work:\n" << outcome.out;
    for (size_t i = 0; i < paths.size(); ++i) EXPECT_TRUE(state_of(paths[i]) == before[i]) << paths[i] << " changed";
    expect_no_temporaries();
  }
};

TEST_F(Outputs, AFifoOrADeviceNodeOrADirectoryIsNeverReplaced) {
  const std::string fifo = dir_.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  expect_refused({"run.output=" + fifo}, {"run.output", fifo, "is a FIFO"}, {fifo});
  expect_refused({"run.output=" + dir_.path().string()}, {"run.output", "is a directory"}, {dir_.path().string()});
  // A character device like /dev/null, made in the test's directory (root only).
  const std::string device = dir_.file("null_device");
  if (mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) {
    expect_refused({"run.output=" + device}, {"run.output", device, "is a character device"}, {device});
  } else {
    std::printf("note: mknod not permitted here; the device-node case ran only as the FIFO one\n");
  }
  // A symbolic link to a FIFO is judged by what it points to.
  const std::string link = dir_.file("link_to_fifo");
  fs::create_symlink(fifo, link);
  expect_refused({"run.output=" + link}, {"run.output", "is a FIFO"}, {fifo, link});
  // A link to nothing is refused too: what it would create is not clear.
  const std::string dangling = dir_.file("dangling");
  fs::create_symlink(dir_.file("nowhere/y.safetensors"), dangling);
  expect_refused({"run.output=" + dangling}, {"run.output", "symbolic link"}, {dangling});
}

TEST_F(Outputs, AFileTheRunReadsIsNeverTheOutput) {
  const std::string config = write_config("config.yaml", base_config());
  // The config itself, through a symbolic link and through a hard link.
  const std::string config_symlink = dir_.file("config_symlink.yaml");
  const std::string config_hardlink = dir_.file("config_hardlink.yaml");
  fs::create_symlink(config, config_symlink);
  fs::create_hard_link(config, config_hardlink);
  for (const std::string& output : {config, config_symlink, config_hardlink}) {
    expect_refused({"run.output=" + output}, {"run.output", "is the same file as the config", config}, {config});
  }
  // The checkpoint (through a hard link), the input and the mask.
  const std::string checkpoint = dir_.file("ckpt");
  fs::create_directories(checkpoint);
  fs::copy_file(kFixtureDir + "/model0-mp1.safetensors", checkpoint + "/model0-mp1.safetensors");
  const std::string checkpoint_link = dir_.file("checkpoint_hardlink.safetensors");
  fs::create_hard_link(checkpoint + "/model0-mp1.safetensors", checkpoint_link);
  const std::string fixture_config = write_config("fixture.yaml", read_text(kFixtureDir + "/config.yaml"));
  const auto refused_fixture_run = [&](const std::string& output, const std::string& key) {
    const std::string checkpoint_file = checkpoint + "/model0-mp1.safetensors";
    const FileState before = state_of(checkpoint_file);
    const Outcome outcome = run_command(mla_run_command(
        fixture_config,
        {"weights.path=" + checkpoint, "run.input=" + kFixtureDir + "/input.safetensors", "run.output=" + output}));
    EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
    EXPECT_NE(outcome.err.find("run.output: '" + output + "' is the same file as " + key), std::string::npos)
        << outcome.err;
    EXPECT_TRUE(state_of(checkpoint_file) == before);
  };
  refused_fixture_run(checkpoint_link, "weights.path");
  const std::string input_copy = dir_.file("x.safetensors");
  fs::copy_file(kFixtureDir + "/input.safetensors", input_copy);
  expect_refused({"run.input=" + input_copy, "model.dim=320", "model.max_batch_size=3", "run.schedule={prefill: 21}",
                  "run.output=" + input_copy},
                 {"same file as run.input"}, {input_copy});
}

TEST_F(Outputs, ASymbolicLinkToARegularFileIsWrittenThrough) {
  const std::string target = dir_.file("real_y.safetensors");
  std::ofstream(target) << "old";
  const std::string link = dir_.file("y_link.safetensors");
  fs::create_symlink(target, link);
  const Outcome outcome = run(base_config(), {"run.output=" + link});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(SafetensorsFile::open(target).info("y").shape, (std::vector<int64_t>{2, 8, 48}));
  expect_no_temporaries();
}

TEST_F(Outputs, AConfigIsReadWithALimitAndNeverFromADevice) {
  const auto refused_config = [&](const std::string& config, const std::vector<std::string>& words) {
    const Outcome outcome = run_command(mla_run_command(config, {}));
    EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
    for (const std::string& word : words)
      EXPECT_NE(outcome.err.find(word), std::string::npos) << word << "\n" << outcome.err;
  };
  refused_config("/dev/zero", {"/dev/zero", "config file is a character device"});
  const std::string fifo = dir_.file("config_fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  refused_config(fifo, {"config file is a FIFO"});  // refused at once, not waited on
  refused_config(dir_.path().string(), {"config file is a directory"});
  const std::string huge = dir_.file("huge.yaml");
  std::ofstream(huge) << base_config() << std::string(kMaxConfigFileBytes, '#');
  refused_config(huge, {"huge.yaml", "more than the 4 MiB a config file may have"});
}

// A writer killed by a signal leaves its temporary; the next run that writes the same output
// removes it when its process is gone (and says so), and leaves a live writer's alone.
TEST_F(Outputs, TemporariesOfKilledWritersAreRemovedByTheNextRun) {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);  // a pid no process has now
  const std::string prefix = output() + ".mla-tmp." + this_host_name() + ".";
  const std::string stale = prefix + std::to_string(child) + ".0";
  const std::string live = prefix + std::to_string(getpid()) + ".0";
  const std::string other_host = output() + ".mla-tmp.some-other-host." + std::to_string(child) + ".0";
  for (const std::string& path : {stale, live, other_host}) std::ofstream(path) << "partial";
  const Outcome outcome = run(base_config());
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_NE(outcome.out.find("removed " + stale + ", a temporary file left by process " + std::to_string(child)),
            std::string::npos)
      << outcome.out;
  EXPECT_TRUE(fs::exists(live)) << "a running writer's temporary was removed";
  EXPECT_TRUE(fs::exists(other_host)) << "another host's temporary was removed";
}

TEST_F(Outputs, ABadKernelSettingIsBadInput) {
  const Outcome outcome =
      run_command("MLA_CPU_ISA=bogus " + mla_run_command(write_config("c.yaml", base_config()), {}));
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_NE(outcome.err.find("environment variable MLA_CPU_ISA = 'bogus'"), std::string::npos) << outcome.err;
}

// mla_bench's two outputs: never one file, and never a CSV of other worlds' rows unless asked.
TEST_F(Outputs, BenchOutputsAreDistinctAndKeepOtherWorldsRows) {
  const std::string sweep =
      write_config("sweep.yaml", read_text(std::string(MLA_SOURCE_DIR) + "/configs/bench_smoke.yaml"));
  const std::string csv = dir_.file("bench.csv");
  const auto bench = [&](const std::vector<std::string>& sets, const std::string& flags = "") {
    std::string command = std::string(MLA_BENCH_BINARY) + " " + sweep + " " + flags +
                          " --set 'sweep={world: [1], batch: [1], seq_len: [8], phase: [decode]}'"
                          " --set bench.baseline=none --set bench.min_reps=1 --set bench.warmup=0";
    for (const std::string& set : sets) command += " --set '" + set + "'";
    return run_command(command);
  };
  std::ofstream(csv) << "precious";
  for (const std::string& same : {csv, dir_.file("./bench.csv")}) {
    const Outcome outcome = bench({"bench.csv=" + csv, "bench.jsonl=" + same});
    EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
    EXPECT_NE(outcome.err.find("bench.jsonl: '" + same + "' is the same file as bench.csv"), std::string::npos)
        << outcome.err;
    EXPECT_EQ(read_text(csv), "precious");
  }
  // A CSV of world 1, relabelled as world 2's rows: a world-1 run must not replace them.
  const std::vector<std::string> outputs = {"bench.csv=" + csv, "bench.jsonl=" + dir_.file("bench.jsonl")};
  ASSERT_EQ(bench(outputs).exit_code, 0);
  std::string rows = read_text(csv);
  for (size_t at = rows.find("\ncpu,1,"); at != std::string::npos; at = rows.find("\ncpu,1,", at))
    rows.replace(at, 7, "\ncpu,2,");
  std::ofstream(csv) << rows;
  const Outcome refused = bench(outputs);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("holds rows of world 2"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("--append"), std::string::npos);
  EXPECT_EQ(read_text(csv), rows);
  const Outcome appended = bench(outputs, "--append");
  EXPECT_EQ(appended.exit_code, 0) << appended.err;
  EXPECT_NE(read_text(csv).find("\ncpu,2,"), std::string::npos);
  EXPECT_NE(read_text(csv).find("\ncpu,1,"), std::string::npos);
  const Outcome overwritten = bench(outputs, "--overwrite");
  EXPECT_EQ(overwritten.exit_code, 0) << overwritten.err;
  EXPECT_EQ(read_text(csv).find("\ncpu,2,"), std::string::npos);
  expect_no_temporaries();
}

TEST_F(Outputs, AllReduceBenchRefusesBadOutputsAndRatesThatMeanNothing) {
  const std::string fifo = dir_.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  const std::string bench = MLA_ALLREDUCE_BENCH_BINARY;
  const Outcome refused = run_command(bench + " --max-bytes 64 --csv " + fifo);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("--csv: '" + fifo + "' exists and is a FIFO"), std::string::npos) << refused.err;
  EXPECT_EQ(run_command(bench + " --min-bytes 4294967296 --max-bytes 4294967296").exit_code, 2);
  // World 1: an in-place all-reduce moves nothing, so it has no bandwidth to report.
  const std::string csv = dir_.file("allreduce.csv");
  const Outcome world1 = run_command(bench + " --min-bytes 1024 --max-bytes 1024 --csv " + csv);
  ASSERT_EQ(world1.exit_code, 0) << world1.err;
  EXPECT_NE(world1.out.find("N/A"), std::string::npos) << world1.out;
  const std::string rows = read_text(csv);
  EXPECT_NE(rows.find(",float,1,"), std::string::npos);  // in-place rows are there...
  for (size_t at = rows.find(",float,1,"); at != std::string::npos; at = rows.find(",float,1,", at + 1)) {
    // ... with their time, and empty algbw and busbw:
    // transport,world,bytes,count,dtype,in_place,reps,time_us,algbw,busbw
    const size_t line_end = rows.find('\n', at);
    const std::string rest = rows.substr(at, line_end - at);
    size_t field = 0, comma = 0;
    for (int i = 0; i < 4; ++i) field = rest.find(',', field + 1);  // after reps and time_us
    comma = rest.find(',', field + 1);
    EXPECT_EQ(comma, field + 1) << "algbw of an in-place row at world 1: " << rest;
  }
}

#ifdef MLA_CUDA_BENCH_BINARY
TEST_F(Outputs, CudaBenchHelpAndBadOptions) {
  const Outcome help = run_command(std::string(MLA_CUDA_BENCH_BINARY) + " --help");
  EXPECT_EQ(help.exit_code, 0) << help.err;
  for (const char* word : {"--reps N", "default 20", "exit codes"})
    EXPECT_NE(help.out.find(word), std::string::npos) << help.out;
  EXPECT_EQ(run_command(std::string(MLA_CUDA_BENCH_BINARY) + " --reps x").exit_code, 2);
  const std::string fifo = dir_.file("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  const Outcome refused = run_command(std::string(MLA_CUDA_BENCH_BINARY) + " --csv " + fifo);
  EXPECT_EQ(refused.exit_code, 2) << refused.err;
  EXPECT_NE(refused.err.find("is a FIFO"), std::string::npos) << refused.err;
}
#endif

TEST(CheckOutputPaths, OutputsNotYetMadeMustStillDiffer) {
  const std::string dir = testing::TempDir();
  try {
    check_output_paths({{"bench.csv", dir + "/new_a.csv"}, {"bench.jsonl", dir + "/sub/../new_a.csv"}}, {});
    ADD_FAILURE() << "two names of one new file were accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("bench.jsonl"), std::string::npos) << error.what();
  }
  EXPECT_NO_THROW(check_output_paths({{"bench.csv", dir + "/a.csv"}, {"bench.jsonl", dir + "/a.jsonl"}}, {}));
}

}  // namespace
}  // namespace mla::test
