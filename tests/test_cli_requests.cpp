// mla_run serving requests (run.schedule.requests, run.kv_cache): the step table and the request
// summary, one output tensor per request, a file of inputs equal to the random ones, and each bad
// key named in one error line.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/io/safetensors.h"
#include "runtime/layer/request_runner.h"
#include "tests/cli_fixture.h"

namespace mla::test {
namespace {

class MlaRunRequests : public MlaRunCli {
 protected:
  // Three requests, one arriving late; a paged fp8 cache of 8 pages of 8 positions.
  std::string requests_config() const {
    return "model: {dim: 48, n_heads: 3, q_lora_rank: 16, kv_lora_rank: 24, qk_nope_head_dim: 8,\n"
           "        qk_rope_head_dim: 4, v_head_dim: 8, max_batch_size: 2, max_seq_len: 32}\n"
           "weights: {format: random, dtype: bf16, seed: 3}\n"
           "run:\n"
           "  threads: 1\n"
           "  input: {random: {seed: 4}}\n"
           "  schedule:\n"
           "    requests:\n"
           "      - {name: a, prompt: 10, generate: 3, arrival: 0}\n"
           "      - {name: b-2, prompt: 4, generate: 5}\n"
           "      - {name: c_3, prompt: 6, generate: 2, arrival: 4}\n"
           "  max_step_tokens: 8\n"
           "  kv_cache: {layout: paged, page_size: 8, pages: 8, dtype: fp8}\n"
           "  output: " +
           output() + "\n";
  }
};

TEST_F(MlaRunRequests, ServesTheRequestsAndWritesATensorForEach) {
  const Outcome outcome = run(requests_config());
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  for (const char* line : {"continuous batching, backend cpu, world 1", "requests: 3 (30 tokens)",
                           "kv cache: paged: 8 pages of 8 positions, fp8 rows", "    0  prefill        8", "mixed",
                           "decode", "requests: 3, 30 tokens in ", "kv cache (rank 0): pool ",
                           "output: 3 tensors y.<request> [prompt + generate, 48] f32"}) {
    EXPECT_NE(outcome.out.find(line), std::string::npos) << line << "\n" << outcome.out;
  }
  const SafetensorsFile y = SafetensorsFile::open(output());
  EXPECT_EQ(y.names(), (std::vector<std::string>{"y.a", "y.b-2", "y.c_3"}));
  EXPECT_EQ(y.info("y.a").shape, (std::vector<int64_t>{13, 48}));
  EXPECT_EQ(y.info("y.b-2").shape, (std::vector<int64_t>{9, 48}));
  EXPECT_EQ(y.info("y.c_3").shape, (std::vector<int64_t>{8, 48}));
}

// The random inputs written as x.<name> tensors give the same outputs, bit for bit.
TEST_F(MlaRunRequests, AFileOfInputsEqualsTheSameRandomInputs) {
  ASSERT_EQ(run(requests_config()).exit_code, 0);
  const SafetensorsFile random_y = SafetensorsFile::open(output());
  const Config config = parse_config(requests_config(), "requests.yaml");
  const RequestInputs inputs = load_request_inputs(config.run.input, config.run.schedule.requests, config.model);
  std::vector<OutputTensor> tensors;
  for (size_t i = 0; i < inputs.x.size(); ++i) {
    const RequestConfig& request = config.run.schedule.requests[i];
    tensors.push_back({"x." + request.name, {request.prompt + request.generate, 48}, inputs.x[i].data()});
  }
  const std::string x_path = dir_.file("x.safetensors");
  write_safetensors_f32(x_path, tensors);
  const std::string y_path = dir_.file("y_file.safetensors");
  const Outcome outcome = run(requests_config(), {"run.input=" + x_path, "run.output=" + y_path});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const SafetensorsFile file_y = SafetensorsFile::open(y_path);
  for (const char* name : {"y.a", "y.b-2", "y.c_3"}) {
    EXPECT_EQ(file_y.read_f32(name), random_y.read_f32(name)) << name;
  }
}

TEST_F(MlaRunRequests, GeneratedRequestsAreNamedInOrder) {
  const Outcome outcome = run(requests_config(), {"run.schedule={requests: {count: 5, prompt: [2, 9], generate: "
                                                  "[0, 4], arrival_every: 2, seed: 7}}"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_EQ(SafetensorsFile::open(output()).names(),
            (std::vector<std::string>{"y.r0", "y.r1", "y.r2", "y.r3", "y.r4"}));
}

TEST_F(MlaRunRequests, EachBadKeyIsNamed) {
  const std::string config = requests_config();
  expect_user_error(run(config, {"run.input={random: {batch: 2, seed: 4}}"}),
                    {"run.input.random.batch", "does not apply to run.schedule.requests"});
  expect_user_error(run(config, {"run.schedule={requests: [{name: \"a b\", prompt: 3}]}"}),
                    {"run.schedule.requests[0].name"});
  expect_user_error(run(config, {"run.schedule={requests: [{name: a, prompt: 3}, {name: a, prompt: 2}]}"}),
                    {"run.schedule.requests[1].name", "another request"});
  expect_user_error(run(config, {"run.schedule={requests: [{generate: 3}]}"}), {"run.schedule.requests[0].prompt"});
  expect_user_error(run(config, {"run.schedule={requests: [{prompt: 30, generate: 3}]}"}),
                    {"run.schedule.requests[0] (r0)", "model.max_seq_len 32"});
  expect_user_error(run(config, {"run.kv_cache.pages=1"}), {"run.schedule.requests[0] (a)", "run.kv_cache.pages 1"});
  expect_user_error(run(config, {"run.schedule={requests: [{prompt: 3}], chunks: [3]}"}),
                    {"run.schedule.chunks", "not both"});
  expect_user_error(run(config, {"run.schedule={requests: []}"}), {"run.schedule.requests"});
  expect_user_error(run(config, {"run.schedule={requests: {count: 2, prompt: [5, 2]}}"}),
                    {"run.schedule.requests.prompt"});
  expect_user_error(run(config, {"run.max_step_tokens=0"}), {"run.max_step_tokens"});
  expect_user_error(run(config, {"run.kv_cache={layout: dense, page_size: 8}"}),
                    {"run.kv_cache.page_size", "paged only"});
  expect_user_error(run(config, {"run.kv_cache.dtype=fp4"}), {"run.kv_cache.dtype"});
  expect_user_error(run(config, {"debug={fail: {rank: 0, step: 99, mode: exit}}"}), {"debug.fail.step"});
}

// A uniform schedule on a paged cache too small for it is refused before any step.
TEST_F(MlaRunRequests, AUniformRunThatOutgrowsThePagesIsRefusedUpFront) {
  expect_user_error(run(base_config(), {"run.kv_cache={layout: paged, page_size: 4, pages: 3}"}),
                    {"run.kv_cache.pages: 2 sequences of 8 positions need 4 pages of 4, but the pool has 3"});
  const Outcome fits = run(base_config(), {"run.kv_cache={layout: paged, page_size: 4, pages: 4, dtype: fp8}"});
  EXPECT_EQ(fits.exit_code, 0) << fits.err;
  EXPECT_NE(fits.out.find("kv cache: paged: 4 pages of 4 positions, fp8 rows"), std::string::npos) << fits.out;
}

TEST_F(MlaRunRequests, AFileWithoutARequestsTensorIsNamed) {
  const std::vector<float> values(13 * 48, 0.5f);
  const std::string x_path = dir_.file("x.safetensors");
  write_safetensors_f32(x_path, {{"x.a", {13, 48}, values.data()}, {"x.b-2", {8, 48}, values.data()}});
  expect_user_error(run(requests_config(), {"run.input=" + x_path}), {x_path, "x.b-2", "[9, 48]"});
  write_safetensors_f32(x_path, {{"x.a", {13, 48}, values.data()}});
  expect_user_error(run(requests_config(), {"run.input=" + x_path}), {x_path, "x.b-2"});
}

// A rank that fails in the middle of continuous batching ends the job as in a uniform run: exit 3,
// the step named, no output.
TEST_F(MlaRunRequests, ARankFailingMidRunEndsTheJob) {
  for (const char* fault : {"{rank: 1, step: 3, mode: exit}", "{rank: 0, step: 2, mode: nan}"}) {
    const Outcome outcome =
        run_command(mpiexec(2) + mla_run_command(write_config("r.yaml", requests_config()),
                                                 {"parallel.timeout_s=5", "parallel.uneven_heads=true",
                                                  std::string("debug={fail: ") + fault + "}"}));
    EXPECT_EQ(outcome.exit_code, 3) << fault << "\n" << outcome.err;
    EXPECT_NE(outcome.err.find(std::string("step ") + (fault[7] == '1' ? "3" : "2")), std::string::npos) << outcome.err;
    EXPECT_FALSE(std::filesystem::exists(output())) << fault;
    expect_no_temporaries();
  }
}

}  // namespace
}  // namespace mla::test
