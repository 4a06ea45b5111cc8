// mla_run as a user runs it: a good config writes y and logs every step; each class of bad input
// (config, checkpoint, input) ends with one error line naming the key, file or tensor, exit
// code 2, and no output file.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "runtime/io/safetensors.h"
#include "tests/cli_fixture.h"
#include "tests/safetensors_builder.h"

namespace mla::test {
namespace {

// By default rank 0 prints one table of the steps, why each choice was made, and a checksum of y.
TEST_F(MlaRunCli, WritesYAndPrintsOneTableOfTheSteps) {
  const Outcome outcome = run(base_config());
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  for (const char* line :
       {"    0  prefill        6        6  fast      naive", "    1  decode         1        7  fast      absorb",
        "    2  decode         1        8  fast      absorb", "why fast, naive (step 0, rank 0): kv_len 6",
        "why fast, absorb (step 1, rank 0): kv_len 7", "y checksum: sum ", "output: y [2, 8, 48] f32 -> "}) {
    EXPECT_NE(outcome.out.find(line), std::string::npos) << line << "\n" << outcome.out;
  }
  EXPECT_EQ(outcome.out.find("step 0: prefill"), std::string::npos) << "per-rank step lines without --verbose";
  const SafetensorsFile y = SafetensorsFile::open(output());
  EXPECT_EQ(y.info("y").shape, (std::vector<int64_t>{2, 8, 48}));
  EXPECT_EQ(y.info("y").dtype, DType::F32);
}

// fast_path_max_len: auto (the default) is the backend's crossover, and the log says which rule chose.
TEST_F(MlaRunCli, TheFastPathLimitIsAutoUnlessGiven) {
  for (const std::string& set : {std::string("run.threads=1"), std::string("run.fast_path_max_len=auto")}) {
    const Outcome outcome = run(base_config(), {set});
    ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
    EXPECT_NE(outcome.out.find("kv_len 6 <= fast_path_max_len 256 (auto)"), std::string::npos) << set << "\n"
                                                                                               << outcome.out;
  }
  const Outcome given = run(base_config(), {"run.fast_path_max_len=7"});
  ASSERT_EQ(given.exit_code, 0) << given.err;
  EXPECT_NE(given.out.find("kv_len 6 <= fast_path_max_len 7;"), std::string::npos) << given.out;
  EXPECT_NE(given.out.find("kv_len 8 > fast_path_max_len 7"), std::string::npos) << given.out;
}

// parallel.communicator: auto and mpi run on the CPU (its ranks always sum through MPI); nccl sums
// GPU ranks' outputs and is refused there, naming the key; an unknown value names the choices.
TEST_F(MlaRunCli, TheCommunicatorKeyIsCheckedAgainstTheBackend) {
  for (const char* choice : {"auto", "mpi"}) {
    const Outcome outcome = run(base_config(), {std::string("parallel.communicator=") + choice});
    EXPECT_EQ(outcome.exit_code, 0) << choice << ": " << outcome.err;
    std::filesystem::remove(output());
  }
  expect_user_error(run(base_config(), {"parallel.communicator=nccl"}),
                    {"parallel.communicator: nccl", "run.backend resolved to cpu", "use auto or mpi"});
  expect_user_error(run(base_config(), {"parallel.communicator=gloo"}),
                    {"parallel.communicator", "expected one of auto | nccl | mpi", "gloo"});
}

// run.log: steps (or --verbose): every rank's line for every step, with the reason.
TEST_F(MlaRunCli, VerboseLogsEveryStepOfEveryRank) {
  for (const std::string& how : {std::string(" --verbose"), std::string(" --set run.log=steps")}) {
    const Outcome outcome = run_command(mla_run_command(write_config("config.yaml", base_config()), {}) + how);
    ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
    for (const char* word : {"step 0: prefill", "step 1: decode", "step 2: decode", "fast path", "kv_len 8"}) {
      EXPECT_NE(outcome.out.find(word), std::string::npos) << how << ": " << word << "\n" << outcome.out;
    }
  }
}

TEST_F(MlaRunCli, ReproducesDeepSeekThroughTheCommand) {
  const Outcome outcome = run(read_text(kFixtureDir + "/config.yaml"),
                              {"weights.path=" + kFixtureDir, "run.input=" + kFixtureDir + "/input.safetensors",
                               "run.output=" + output(), "run.formulation=naive"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<float> y = SafetensorsFile::open(output()).read_f32("y");
  const std::vector<float> expected =
      SafetensorsFile::open(kFixtureDir + "/expected.safetensors").read_f32("y_naive_f32");
  EXPECT_LE(relative_l2(y, to_double(expected)), 1e-5);
}

// A key set by --set is named once: "--set model.dim: expected ...", not "--set model.dim: model.dim: ...".
TEST_F(MlaRunCli, ASetKeyIsNamedOnce) {
  const Outcome outcome = run(base_config(), {"model.dim=0"});
  expect_user_error(outcome, {"--set model.dim: expected an integer in [1, 1048576], got '0'"});
  EXPECT_EQ(outcome.err.find("model.dim: model.dim"), std::string::npos) << outcome.err;
}

// The weights line says what a bf16 run holds, not "fp32 compute copies".
TEST_F(MlaRunCli, TheWeightsLineSaysWhatTheComputeHolds) {
  const Outcome bf16 = run(base_config(), {"run.compute_dtype=bf16"});
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  EXPECT_NE(bf16.out.find("loaded as fp32 buffers of bf16 values (the layer keeps bf16)"), std::string::npos)
      << bf16.out;
  EXPECT_EQ(bf16.out.find("fp32 compute copies"), std::string::npos) << bf16.out;
}

TEST_F(MlaRunCli, UnknownKey) {
  expect_user_error(run(base_config() + "  speed: fast\n"), {"run.speed", "unknown key"});
}

TEST_F(MlaRunCli, UnknownSection) {
  expect_user_error(run(base_config() + "extra: {a: 1}\n"), {"extra", "unknown key"});
}

// A key holding a newline (a quoted YAML key) still gives a one-line message.
TEST_F(MlaRunCli, ControlCharactersInKeysStayOnOneLine) {
  expect_user_error(run(base_config() + "  \"spe\\ned\": 1\n"), {"run.spe\\x0aed", "unknown key"});
}

// A --set value that refers to itself (a YAML alias cycle) is an error, not an endless walk.
TEST_F(MlaRunCli, ACyclicSetValueIsAnError) {
  expect_user_error(run(base_config(), {"run.threads=&a {b: *a}"}), {"--set run.threads", "expected an integer"});
}

TEST_F(MlaRunCli, WrongType) {
  expect_user_error(run(base_config(), {"model.dim=forty"}), {"model.dim", "expected an integer", "forty"});
}

TEST_F(MlaRunCli, OutOfRange) {
  expect_user_error(run(base_config(), {"run.fast_path_max_len=0"}), {"run.fast_path_max_len", "[1,"});
  expect_user_error(run(base_config(), {"run.fast_path_max_len=fast"}),
                    {"run.fast_path_max_len", "expected auto or a length"});
}

TEST_F(MlaRunCli, BadChoice) {
  expect_user_error(run(base_config(), {"run.attention=fastest"}), {"run.attention", "auto | fast | standard"});
}

TEST_F(MlaRunCli, OddRopeDim) {
  expect_user_error(run(base_config(), {"model.qk_rope_head_dim=5"}), {"qk_rope_head_dim", "even"});
}

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

TEST_F(MlaRunCli, BadSetSyntax) {
  expect_user_error(run(base_config(), {"run.threads"}), {"--set", "section.key=value"});
}

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
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint_dir)),
                    {"model0-mp1.safetensors"});
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

// A finite weight too large for fp32 products: the partial output goes non-finite, and the rank
// names the first tensor of the step that did and the weight (file and tensor) that made it.
TEST_F(MlaRunCli, AWeightThatOverflowsIsNamed) {
  const std::string checkpoint = edited_checkpoint([](auto& tensors, auto& storage) {
    for (size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].name == "layers.0.attn.wkv_a.weight") storage[i][5] = 1.7e38f;
  });
  const Outcome outcome = run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(checkpoint));
  EXPECT_EQ(outcome.exit_code, 3) << outcome.err;
  for (const std::string& word : std::vector<std::string>{
           "step 0", "partial output y is not finite", "the output of wkv_a",
           checkpoint + "/model0-mp1.safetensors: tensor 'layers.0.attn.wkv_a.weight'", "overflows fp32"}) {
    EXPECT_NE(outcome.err.find(word), std::string::npos) << word << "\n" << outcome.err;
  }
  EXPECT_FALSE(std::filesystem::exists(output()));
}

// The fixture's wkv_b stored as fp8 with a scale of the wrong block count.
TEST_F(MlaRunCli, Fp8ScaleOfTheWrongShape) {
  const SafetensorsFile source = SafetensorsFile::open(kFixtureDir + "/model0-mp1.safetensors");
  std::vector<RawTensor> tensors;
  for (const std::string& name : source.names()) {
    const TensorInfo& info = source.info(name);
    if (name == "layers.0.attn.wkv_b.weight") {
      std::vector<uint8_t> codes;
      for (float value : source.read_f32(name)) codes.push_back(f32_to_fp8_e4m3(value * 64.0f));
      tensors.push_back({name, "F8_E4M3", info.shape, raw_bytes(codes)});
      // [320, 80] needs [3, 1] scales; give [2, 1].
      tensors.push_back(
          {"layers.0.attn.wkv_b.scale", "F32", {2, 1}, raw_bytes(std::vector<float>{1 / 64.0f, 1 / 64.0f})});
      continue;
    }
    std::string bytes(info.data_end - info.data_begin, '\0');
    source.read_raw(name, {}, bytes.data());
    tensors.push_back({name, dtype_name(info.dtype), info.shape, bytes});
  }
  std::filesystem::create_directories(dir_.file("fp8"));
  write_bytes(dir_.file("fp8") + "/model0-mp1.safetensors", safetensors_bytes(tensors));
  expect_user_error(run(read_text(kFixtureDir + "/config.yaml"), fixture_sets(dir_.file("fp8"))),
                    {"layers.0.attn.wkv_b.scale", "[2, 1]", "expected [3, 1]"});
}

TEST_F(MlaRunCli, AcceptsBf16Input) {
  const std::vector<float> x = SafetensorsFile::open(kFixtureDir + "/input.safetensors").read_f32("x");
  write_bytes(dir_.file("x_bf16.safetensors"), safetensors_bytes({{"x", "BF16", {3, 21, 320}, bf16_bytes(x)}}));
  std::vector<std::string> sets = fixture_sets(kFixtureDir);
  sets[1] = "run.input=" + dir_.file("x_bf16.safetensors");
  const Outcome outcome = run(read_text(kFixtureDir + "/config.yaml"), sets);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  // The fixture's x holds bf16 values, so the bf16 file is the same input.
  const std::vector<float> expected =
      SafetensorsFile::open(kFixtureDir + "/expected.safetensors").read_f32("y_absorb_f32");
  EXPECT_LE(relative_l2(SafetensorsFile::open(output()).read_f32("y"), to_double(expected)), 1e-5);
}

TEST_F(MlaRunCli, InputOfTheWrongWidth) {
  write_bytes(dir_.file("x.safetensors"),
              safetensors_bytes({{"x", "F32", {1, 2, 3}, raw_bytes(std::vector<float>(6, 0.5f))}}));
  expect_user_error(run(base_config(), {"run.input=" + dir_.file("x.safetensors")}),
                    {"x.safetensors", "'x'", "model.dim"});
}

// Sizes whose product overflows int64 (2^64 floats of KV cache) must be refused, not wrap around.
TEST_F(MlaRunCli, SizesPastInt64AreRefused) {
  expect_user_error(run(base_config(), {"model.max_batch_size=1048576", "model.max_seq_len=67108864",
                                        "model.kv_lora_rank=262142", "model.qk_rope_head_dim=2"}),
                    {"not enough memory"});
}

TEST_F(MlaRunCli, AHugeRandomInputIsRefusedBeforeItIsMade) {
  expect_user_error(run(base_config(), {"model.max_batch_size=4096", "model.max_seq_len=1048576",
                                        "run.input={random: {batch: 4096, tokens: 1048576, seed: 1}}",
                                        "run.schedule={prefill: 1048576}"}),
                    {"not enough memory", "input and output"});
}

TEST_F(MlaRunCli, AnAbsurdScheduleIsAConfigError) {
  expect_user_error(run(base_config(), {"run.schedule={prefill: 1, decode_steps: 1000000000000000}"}),
                    {"run.schedule.decode_steps"});
  expect_user_error(run(base_config(), {"run.schedule={chunks: [9223372036854775807, 9223372036854775807, 10]}"}),
                    {"run.schedule.chunks[0]"});
}

TEST_F(MlaRunCli, AMaskTheScheduleCannotHonourIsRefused) {
  // All zeros: row 0 lets every position in, but a chunk of 4 at position 0 sees only 4 of them.
  const std::vector<float> mask(64, 0.0f);
  write_safetensors_f32(dir_.file("mask.safetensors"), {{"mask", {8, 8}, mask.data()}});
  expect_user_error(run(base_config(), {"run.mask=" + dir_.file("mask.safetensors"), "run.schedule={chunks: [4, 4]}"}),
                    {"run.mask", "row 0, column 4", "step 0"});
}

TEST_F(MlaRunCli, AnImpossibleOutputIsRefusedBeforeAnyStep) {
  std::ofstream(dir_.file("plain_file")) << "not a directory";
  const Outcome outcome = run(base_config(), {"run.output=" + dir_.file("plain_file/y.safetensors")});
  expect_user_error(outcome, {"run.output", "plain_file", "not a directory"});
  EXPECT_EQ(outcome.out.find("prefill"), std::string::npos) << "refused only after the work:\n" << outcome.out;
  EXPECT_EQ(read_text(dir_.file("plain_file")), "not a directory");
}

// The output's missing directories are made, and the log says so.
TEST_F(MlaRunCli, TheOutputsDirectoryIsCreatedAndLogged) {
  const std::string y_path = dir_.file("results/run1/y.safetensors");
  const Outcome outcome = run(base_config(), {"run.output=" + y_path});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_NE(outcome.out.find("created directory " + dir_.file("results") + " for run.output"), std::string::npos)
      << outcome.out;
  EXPECT_NE(outcome.out.find("created directory " + dir_.file("results/run1") + " for run.output"), std::string::npos);
  EXPECT_EQ(SafetensorsFile::open(y_path).info("y").shape, (std::vector<int64_t>{2, 8, 48}));
}

TEST_F(MlaRunCli, KeysThatWouldBeIgnoredAreRefused) {
  expect_user_error(run(base_config(), {"weights.path=/nowhere"}), {"weights.path", "format random"});
  expect_user_error(run(base_config(), {"debug={fail: {rank: 5, step: 0, mode: exit}}"}),
                    {"debug.fail.rank", "world of 1"});
  expect_user_error(run(base_config(), {"debug={fail: {rank: 0, step: 3, mode: exit}}"}),
                    {"debug.fail.step", "3 steps"});
}

TEST_F(MlaRunCli, FailedRunKeepsAnOldOutputUntouched) {
  std::ofstream(output()) << "old contents";
  const Outcome outcome = run(base_config(), {"run.threads=-1"});
  EXPECT_EQ(outcome.exit_code, 2);
  EXPECT_EQ(read_text(output()), "old contents");
}

}  // namespace
}  // namespace mla::test
