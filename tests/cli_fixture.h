// The harness of the command-line tests: runs mla_run (alone or under mpiexec) on a config in a
// temporary directory and captures its exit code, stdout and stderr.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "tests/test_util.h"

namespace mla::test {

inline const std::string kFixtureDir = std::string(MLA_SOURCE_DIR) + "/tests/fixtures/deepseek_odd_dims";

struct Outcome {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string read_text(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class MlaRunCli : public testing::Test {
 protected:
  // A small valid config: random bf16 weights, random input, prefill 6 + 2 decode steps.
  std::string base_config() const {
    return "model: {dim: 48, n_heads: 3, q_lora_rank: 16, kv_lora_rank: 24, qk_nope_head_dim: 8,\n"
           "        qk_rope_head_dim: 4, v_head_dim: 8, max_batch_size: 2, max_seq_len: 32}\n"
           "weights: {format: random, dtype: bf16, seed: 3}\n"
           "run:\n"
           "  backend: cpu\n"
           "  threads: 1\n"
           "  input: {random: {batch: 2, tokens: 8, seed: 4}}\n"
           "  schedule: {prefill: 6, decode_steps: 2}\n"
           "  output: " +
           output() + "\n";
  }
  std::string output() const { return dir_.file("y.safetensors"); }

  Outcome run(const std::string& config_text, const std::vector<std::string>& sets = {}) {
    return run_command(mla_run_command(write_config("config.yaml", config_text), sets));
  }

  std::string write_config(const std::string& name, const std::string& text) const {
    std::ofstream(dir_.file(name)) << text;
    return dir_.file(name);
  }

  static std::string mla_run_command(const std::string& config_path, const std::vector<std::string>& sets) {
    std::string command = std::string(MLA_RUN_BINARY) + " " + config_path;
    for (const std::string& set : sets) command += " --set '" + set + "'";
    return command;
  }

  // mpiexec as root and with more ranks than cores, as CI runs it.
  static std::string mpiexec(int ranks) {
    return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
           "mpiexec -n " +
           std::to_string(ranks) + " ";
  }

  Outcome run_command(std::string command) {
    command += " > " + dir_.file("out.txt") + " 2> " + dir_.file("err.txt");
    const int status = std::system(command.c_str());
    Outcome outcome;
    outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    outcome.out = read_text(dir_.file("out.txt"));
    outcome.err = read_text(dir_.file("err.txt"));
    return outcome;
  }

  // Exit 2, one line on stderr containing every word of `expected`, and no output file.
  void expect_user_error(const Outcome& outcome, const std::vector<std::string>& expected) {
    EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
    // Under mpiexec, its own notice about the non-zero exit follows ours.
    const std::string ours = outcome.err.substr(0, outcome.err.find("-----"));
    EXPECT_EQ(std::count(ours.begin(), ours.end(), '\n'), 1) << outcome.err;
    for (const std::string& word : expected) EXPECT_NE(outcome.err.find(word), std::string::npos) << outcome.err;
    EXPECT_FALSE(std::filesystem::exists(output())) << "a failed run left " << output();
    expect_no_temporaries();
  }

  // No AtomicFile temporary ("<output>.mla-tmp.<host>.<pid>.<n>") anywhere in the test's directory.
  void expect_no_temporaries() const {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_.path())) {
      EXPECT_EQ(entry.path().string().find(".mla-tmp."), std::string::npos) << "temporary left: " << entry.path();
    }
  }

  // A copy of the fixture checkpoint with `edit` applied to its tensors.
  std::string edited_checkpoint(
      const std::function<void(std::vector<OutputTensor>&, std::vector<std::vector<float>>&)>& edit) {
    const SafetensorsFile source = SafetensorsFile::open(kFixtureDir + "/model0-mp1.safetensors");
    std::vector<std::vector<float>> storage;
    std::vector<std::string> names = source.names();
    for (const std::string& name : names) storage.push_back(source.read_f32(name));
    std::vector<OutputTensor> tensors;
    for (size_t i = 0; i < names.size(); ++i)
      tensors.push_back({names[i], source.info(names[i]).shape, storage[i].data()});
    edit(tensors, storage);
    const std::string checkpoint_dir = dir_.file("ckpt");
    std::filesystem::create_directories(checkpoint_dir);
    write_safetensors_f32(checkpoint_dir + "/model0-mp1.safetensors", tensors);
    return checkpoint_dir;
  }

  std::vector<std::string> fixture_sets(const std::string& weights_path) const {
    return {"weights.path=" + weights_path, "run.input=" + kFixtureDir + "/input.safetensors",
            "run.output=" + output()};
  }

  TempDir dir_;
};

}  // namespace mla::test
