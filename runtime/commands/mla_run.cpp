// mla_run CONFIG.yaml [--set section.key=value ...]
//
// Loads the config, this rank's weights and the input, runs the schedule (prefill, chunks,
// decode steps) through the layer, prints what it did per step and writes y atomically.
// Exit codes: 0 done, 2 bad input (config, files, shapes), 1 anything else.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "runtime/config.h"
#include "runtime/errors.h"
#include "runtime/mla_layer.h"
#include "runtime/runner.h"
#include "runtime/safetensors.h"
#include "runtime/weights.h"

namespace mla {
namespace {

std::string megabytes(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MB", static_cast<double>(bytes) / 1e6);
  return text;
}

int configure_threads(const RunConfig& run) {
  const int threads = run.threads > 0 ? run.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(threads);
  set_blas_threads(threads);
  return threads;
}

void check_backend(const RunConfig& run) {
  if (run.backend == Backend::Cuda) {
    throw UserError("run.backend: cuda is not available in this build (the CUDA backend is not implemented yet); "
                    "use cpu or auto");
  }
}

void print_model(const ModelArgs& m, const HeadShard& shard) {
  std::printf("model: dim %ld, n_heads %ld (%s), q_lora_rank %ld, kv_lora_rank %ld, dq %ld (%ld nope + %ld rope), dv %ld\n",
              m.dim, m.n_heads, describe(shard).c_str(), m.q_lora_rank, m.kv_lora_rank, m.qk_head_dim(),
              m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim);
  std::printf("rope: theta %g, YaRN %s, softmax scale %.6g\n", m.rope_theta,
              m.yarn_active() ? ("on (factor " + std::to_string(m.rope_factor) + ")").c_str() : "off",
              m.softmax_scale());
}

void print_step(size_t index, const StepReport& step) {
  const char* phase = step.seq == 1 && step.start_pos > 0 ? "decode" : (step.start_pos == 0 ? "prefill" : "chunk");
  std::printf("step %zu: %-7s start_pos %ld tokens %ld kv_len %ld -> %s path, %s (%s); workspace %s; %.3f ms\n", index,
              phase, step.start_pos, step.seq, step.kv_len, to_string(step.plan.path), to_string(step.plan.formulation),
              step.plan.reason.c_str(), megabytes(step.attention_workspace_bytes).c_str(), step.time_ms);
}

int run(const std::string& config_path, const std::vector<std::string>& overrides) {
  const Config config = load_config(config_path, overrides);
  check_backend(config.run);
  const int threads = configure_threads(config.run);
  SingleProcessCommunicator comm;
  const HeadShard shard = shard_heads(config.model.n_heads, comm.world(), comm.rank(), false);
  const InputTensor x = load_input(config.run.input, config.model);
  const std::vector<int64_t> steps = config.run.schedule.steps(x.tokens);
  const std::vector<float> mask = load_mask(config.run.mask, x.tokens);

  std::printf("mla_run: %s; backend cpu, %d threads, compute %s, host %s\n", config_path.c_str(), threads,
              to_string(config.run.compute_dtype), comm.host().c_str());
  print_model(config.model, shard);
  LoadedWeights loaded = load_layer_weights(config.weights, config.model, shard, config.run.compute_dtype);
  std::printf("weights: %s, stored %s, %s as fp32 compute copies\n", loaded.description.c_str(),
              loaded.storage_dtype.c_str(), megabytes(loaded.weights.bytes()).c_str());
  std::printf("input: x [%ld, %ld, %ld] from %s; %zu steps; mask: %s\n", x.batch, x.tokens, x.dim,
              x.description.c_str(), steps.size(), mask.empty() ? "causal" : config.run.mask.c_str());

  MlaLayer layer(config.model, shard, std::move(loaded.weights), config.run);
  std::printf("kv cache: [%ld, %ld, %ld] latent (c_n | k_pe), %s, shared by both formulations\n",
              config.model.max_batch_size, config.model.max_seq_len,
              config.model.kv_lora_rank + config.model.qk_rope_head_dim, megabytes(layer.kv_cache_bytes()).c_str());
  size_t step_index = 0;
  const RunResult result = run_schedule(layer, comm, x, steps, mask,
                                        [&](const StepReport& step) { print_step(step_index++, step); });
  std::printf("total: %.3f ms for %zu steps (all-reduce %.3f ms)\n", result.total_ms, result.steps.size(),
              result.allreduce_ms);

  if (config.run.output.empty()) {
    std::printf("output: not written (run.output is empty)\n");
    return 0;
  }
  write_safetensors_f32(config.run.output, {{"y", {x.batch, x.tokens, x.dim}, result.y.data()}},
                        {{"config", config_path}, {"compute_dtype", to_string(config.run.compute_dtype)}});
  std::printf("output: y [%ld, %ld, %ld] f32 -> %s\n", x.batch, x.tokens, x.dim, config.run.output.c_str());
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  CLI::App app{"Runs one MLA layer forward over a schedule of prefill, chunk and decode steps."};
  std::string config_path;
  std::vector<std::string> overrides;
  app.add_option("config", config_path, "YAML config (sections model, weights, run)")->required();
  app.add_option("--set", overrides, "override a config key: section.key=value (value read as YAML); repeatable");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::ParseError& error) {
    std::fprintf(stderr, "mla_run: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  }
  try {
    return mla::run(config_path, overrides);
  } catch (const mla::UserError& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "mla_run: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  } catch (const std::exception& error) {
    std::fflush(stdout);
    std::fprintf(stderr, "mla_run: internal error: %s\n", error.what());
    return 1;
  }
}
