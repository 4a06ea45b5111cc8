// mla_run as a user runs it: a good config writes y and logs every step; each class of bad input
// (config, checkpoint, input) ends with one error line naming the key, file or tensor, exit
// code 2, and no output file.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace mla::test {
namespace {

const std::string kFixtureDir = std::string(MLA_SOURCE_DIR) + "/tests/fixtures/deepseek_odd_dims";

struct Outcome {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string read_text(const std::string& path) {
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
           "  output: " + output() + "\n";
  }
  std::string output() const { return dir_.file("y.safetensors"); }

  Outcome run(const std::string& config_text, const std::vector<std::string>& sets = {}) {
    const std::string config_path = dir_.file("config.yaml");
    std::ofstream(config_path) << config_text;
    std::string command = std::string(MLA_RUN_BINARY) + " " + config_path;
    for (const std::string& set : sets) command += " --set '" + set + "'";
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
    EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
    for (const std::string& word : expected) EXPECT_NE(outcome.err.find(word), std::string::npos) << outcome.err;
    EXPECT_FALSE(std::filesystem::exists(output())) << "a failed run left " << output();
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
      EXPECT_EQ(entry.path().string().find(".tmp"), std::string::npos) << "temporary left: " << entry.path();
    }
  }

  // A copy of the fixture checkpoint with `edit` applied to its tensors.
  std::string edited_checkpoint(const std::function<void(std::vector<OutputTensor>&, std::vector<std::vector<float>>&)>& edit) {
    const SafetensorsFile source = SafetensorsFile::open(kFixtureDir + "/model0-mp1.safetensors");
    std::vector<std::vector<float>> storage;
    std::vector<std::string> names = source.names();
    for (const std::string& name : names) storage.push_back(source.read_f32(name));
    std::vector<OutputTensor> tensors;
    for (size_t i = 0; i < names.size(); ++i) tensors.push_back({names[i], source.info(names[i]).shape, storage[i].data()});
    edit(tensors, storage);
    const std::string checkpoint_dir = dir_.file("ckpt");
    std::filesystem::create_directories(checkpoint_dir);
    write_safetensors_f32(checkpoint_dir + "/model0-mp1.safetensors", tensors);
    return checkpoint_dir;
  }

  std::vector<std::string> fixture_sets(const std::string& weights_path) const {
    return {"weights.path=" + weights_path, "run.input=" + kFixtureDir + "/input.safetensors", "run.output=" + output()};
  }

  TempDir dir_;
};

TEST_F(MlaRunCli, WritesYAndLogsThePathOfEveryStep) {
  const Outcome outcome = run(base_config());
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  for (const char* word : {"step 0: prefill", "step 1: decode", "step 2: decode", "fast path", "kv_len 8",
                           "output: y [2, 8, 48] f32 -> "}) {
    EXPECT_NE(outcome.out.find(word), std::string::npos) << word << "\n" << outcome.out;
  }
  const SafetensorsFile y = SafetensorsFile::open(output());
  EXPECT_EQ(y.info("y").shape, (std::vector<int64_t>{2, 8, 48}));
  EXPECT_EQ(y.info("y").dtype, DType::F32);
}

TEST_F(MlaRunCli, ReproducesDeepSeekThroughTheCommand) {
  const Outcome outcome = run(read_text(kFixtureDir + "/config.yaml"),
                              {"weights.path=" + kFixtureDir, "run.input=" + kFixtureDir + "/input.safetensors",
                               "run.output=" + output(), "run.formulation=naive"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<float> y = SafetensorsFile::open(output()).read_f32("y");
  const std::vector<float> expected = SafetensorsFile::open(kFixtureDir + "/expected.safetensors").read_f32("y_naive_f32");
  EXPECT_LE(relative_l2(y, to_double(expected)), 1e-5);
}

TEST_F(MlaRunCli, UnknownKey) { expect_user_error(run(base_config() + "  speed: fast\n"), {"run.speed", "unknown key"}); }

TEST_F(MlaRunCli, UnknownSection) { expect_user_error(run(base_config() + "extra: {a: 1}\n"), {"extra", "unknown key"}); }

TEST_F(MlaRunCli, WrongType) {
  expect_user_error(run(base_config(), {"model.dim=forty"}), {"model.dim", "expected an integer", "forty"});
}

TEST_F(MlaRunCli, OutOfRange) {
  expect_user_error(run(base_config(), {"run.fast_path_max_len=0"}), {"run.fast_path_max_len", "[1,"});
}

TEST_F(MlaRunCli, BadChoice) {
  expect_user_error(run(base_config(), {"run.attention=fastest"}), {"run.attention", "auto | fast | standard"});
}

TEST_F(MlaRunCli, OddRopeDim) { expect_user_error(run(base_config(), {"model.qk_rope_head_dim=5"}), {"qk_rope_head_dim", "even"}); }

TEST_F(MlaRunCli, InputLongerThanMaxSeqLen) {
  expect_user_error(run(base_config(), {"run.input.random.tokens=40", "run.schedule={prefill: 38, decode_steps: 2}"}),
                    {"run.input", "model.max_seq_len 32"});
}

TEST_F(MlaRunCli, ScheduleNotMatchingInput) {
  expect_user_error(run(base_config(), {"run.schedule={chunks: [4, 4, 1]}"}), {"run.schedule", "9 tokens", "8"});
}

TEST_F(MlaRunCli, BatchOverMaxBatchSize) {
  expect_user_error(run(base_config(), {"run.input.random.batch=3"}), {"run.input", "model.max_batch_size 2"});
}

TEST_F(MlaRunCli, BadSetSyntax) { expect_user_error(run(base_config(), {"run.threads"}), {"--set", "section.key=value"}); }

TEST_F(MlaRunCli, CudaBackendNotBuilt) { expect_user_error(run(base_config(), {"run.backend=cuda"}), {"run.backend"}); }

TEST_F(MlaRunCli, MissingCheckpoint) {
  const std::string missing = dir_.file("no_such_dir");
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(missing)), {missing});
}

TEST_F(MlaRunCli, CorruptCheckpoint) {
  const std::string checkpoint_dir = dir_.file("corrupt");
  std::filesystem::create_directories(checkpoint_dir);
  const std::string bytes = read_text(kFixtureDir + "/model0-mp1.safetensors");
  std::ofstream(checkpoint_dir + "/model0-mp1.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint_dir)), {"model0-mp1.safetensors"});
}

TEST_F(MlaRunCli, MissingTensor) {
  const std::string checkpoint = edited_checkpoint([](auto& tensors, auto&) {
    std::erase_if(tensors, [](const OutputTensor& t) { return t.name == "layers.0.attn.wo.weight"; });
  });
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint)),
                    {"missing tensor", "layers.0.attn.wo.weight"});
}

TEST_F(MlaRunCli, WrongTensorShape) {
  const std::string checkpoint = edited_checkpoint([](auto& tensors, auto&) {
    for (OutputTensor& t : tensors)
      if (t.name == "layers.0.attn.wkv_b.weight") t.shape = {160, 160};  // same bytes, wrong shape
  });
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint)),
                    {"layers.0.attn.wkv_b.weight", "[160, 160]", "expected [320, 80]"});
}

TEST_F(MlaRunCli, NonFiniteWeight) {
  const std::string checkpoint = edited_checkpoint([](auto& tensors, auto& storage) {
    for (size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].name == "layers.0.attn.wq_a.weight") storage[i][17] = NAN;
  });
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint)),
                    {"layers.0.attn.wq_a.weight", "element 17", "not finite"});
}

TEST_F(MlaRunCli, FailedRunKeepsAnOldOutputUntouched) {
  std::ofstream(output()) << "old contents";
  const Outcome outcome = run(base_config(), {"run.threads=-1"});
  EXPECT_EQ(outcome.exit_code, 2);
  EXPECT_EQ(read_text(output()), "old contents");
}

}  // namespace
}  // namespace mla::test
