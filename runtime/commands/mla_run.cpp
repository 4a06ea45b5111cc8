// mla_run CONFIG.yaml [--set section.key=value ...]
//
// Loads the config, this rank's weights and the input, runs the schedule (prefill, chunks,
// decode steps) through the layer, prints what it did per step and writes y atomically.
// Exit codes: 0 done, 2 bad input (config, files, shapes), 1 anything else.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "parallel/communicator.h"
#include "parallel/mpi_session.h"
#include "parallel/watchdog.h"
#include "parallel/sharding.h"
#include "runtime/config.h"
#include "runtime/errors.h"
#include "runtime/memory_plan.h"
#include "runtime/rank_agreement.h"
#include "runtime/mla_layer.h"
#include "runtime/runner.h"
#include "runtime/safetensors.h"
#include "runtime/weights.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "parallel/nccl_bootstrap.h"
#include "parallel/nccl_communicator.h"
#include "runtime/cuda_step_executor.h"
#include "runtime/mla_layer_cuda.h"
#endif

namespace mla {
namespace {

std::string format_bytes(int64_t bytes) {
  char text[32];
  const double value = static_cast<double>(bytes);
  if (bytes < 1000000) {
    std::snprintf(text, sizeof(text), "%.1f KB", value / 1e3);
  } else {
    std::snprintf(text, sizeof(text), "%.1f MB", value / 1e6);
  }
  return text;
}

// run.backend cuda needs a build with the CUDA backend and a device on the rank; auto takes cuda
// where both are there. Returns what this rank runs (the ranks then agree on it).
Backend resolve_backend(const RunConfig& run) {
#if MLA_HAVE_CUDA
  const int devices = cuda_device_count();
  if (run.backend == Backend::Cuda && devices == 0) {
    throw UserError("run.backend: cuda, but this rank sees no CUDA device; use cpu or auto");
  }
  if (run.backend == Backend::Auto) return devices > 0 ? Backend::Cuda : Backend::Cpu;
  return run.backend;
#else
  if (run.backend == Backend::Cuda) {
    throw UserError("run.backend: cuda is not available in this build (built without nvcc); use cpu or auto");
  }
  return Backend::Cpu;
#endif
}

#if MLA_HAVE_CUDA
// The CUDA backend: one GPU per rank (local rank modulo the node's devices), the layer's buffers
// sized once for this run's schedule, NCCL summing the partial outputs on the layer's stream.
RunResult run_on_cuda(const Config& config, const MpiSession& session, Phases& phases, const HeadShard& shard,
                      const LayerWeights& weights, const InputTensor& x, const std::vector<int64_t>& steps,
                      const std::vector<float>& mask, const RunOptions& options) {
  std::unique_ptr<CudaMlaLayer> layer;
  phases.run([&] {
    const int device = session.local_rank() % cuda_device_count();
    CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp properties{};
    CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
    CudaLayerLimits limits;
    limits.max_batch = x.batch;
    limits.max_step_len = *std::max_element(steps.begin(), steps.end());
    limits.max_kv_len = x.tokens;
    limits.mask = !mask.empty();
    layer = std::make_unique<CudaMlaLayer>(config.model, shard, weights, config.run, limits);
    std::printf("%s GPU %d (%s); device memory %s\n", session.label().c_str(), device, properties.name,
                layer->memory().describe().c_str());
  });
  NcclCommunicator comm(share_nccl_unique_id(session), session.rank(), session.world(), layer->stream(),
                        config.parallel.timeout_s);
  CudaStepExecutor executor(*layer, comm, mask, x.tokens);
  return run_schedule(executor, x, steps, mask, options);
}
#endif

void print_model(const ModelArgs& m) {
  std::printf("model: dim %ld, n_heads %ld, q_lora_rank %ld, kv_lora_rank %ld, dq %ld (%ld nope + %ld rope), dv %ld\n",
              m.dim, m.n_heads, m.q_lora_rank, m.kv_lora_rank, m.qk_head_dim(), m.qk_nope_head_dim,
              m.qk_rope_head_dim, m.v_head_dim);
  std::printf("rope: theta %g, YaRN %s, softmax scale %.6g\n", m.rope_theta,
              m.yarn_active() ? ("on (factor " + std::to_string(m.rope_factor) + ")").c_str() : "off",
              m.softmax_scale());
}

void print_step(const std::string& label, size_t index, const StepReport& step) {
  const char* phase = step.seq == 1 && step.start_pos > 0 ? "decode" : (step.start_pos == 0 ? "prefill" : "chunk");
  std::printf("%s step %zu: %-7s start_pos %ld tokens %ld kv_len %ld -> %s path, %s (%s); workspace %s; %.3f ms\n",
              label.c_str(), index, phase, step.start_pos, step.seq, step.kv_len, to_string(step.plan.path),
              to_string(step.plan.formulation), step.plan.reason.c_str(),
              format_bytes(step.attention_workspace_bytes).c_str(), step.time_ms);
}

// debug.fail must name a rank and a step that exist, or it would silently never fire.
void check_fault_plan(const FaultPlan& fault, int world, size_t steps) {
  if (fault.mode == FaultMode::None) return;
  if (fault.rank >= world) {
    throw UserError("debug.fail.rank: " + std::to_string(fault.rank) + " is not a rank of this world of " + std::to_string(world));
  }
  if (fault.step >= static_cast<int64_t>(steps)) {
    throw UserError("debug.fail.step: " + std::to_string(fault.step) + " is not a step of this schedule of " +
                    std::to_string(steps) + " steps (counted from 0)");
  }
}

int run(const MpiSession& session, const std::string& config_path, const std::vector<std::string>& overrides) {
  const bool leader = session.rank() == 0;
  const std::string label = session.label();
  Phases phases(session);
  Config config;
  session.watchdog()->progress("reading the config");
  Backend backend = Backend::Cpu;
  phases.run([&] {
    config = load_config(config_path, overrides);
    backend = resolve_backend(config.run);
  });
  phases.agree("the configuration", config_text(config));
  phases.agree("the backend (run.backend as each rank resolved it)", to_string(backend));
  Watchdog& watchdog = *session.watchdog();
  watchdog.set_timeout(config.parallel.timeout_s);
  const RankThreads rank_threads = configure_rank_threads(config.run.threads, config.run.pin_threads, session);
  const int threads = rank_threads.count;
  MpiCommunicator comm(session);

  HeadShard shard;
  InputTensor x;
  std::vector<int64_t> steps;
  std::vector<float> mask;
  LoadedWeights loaded;
  watchdog.progress("loading the input and weights");
  phases.run([&] {
    try {
      shard = shard_heads(config.model.n_heads, comm.world(), comm.rank(), config.parallel.uneven_heads);
    } catch (const std::invalid_argument& error) {
      throw UserError(std::string("model.n_heads: ") + error.what());
    }
    const InputShape shape = input_shape(config.run.input, config.model);
    steps = config.run.schedule.steps(shape.tokens);
    check_fault_plan(config.fault, comm.world(), steps.size());
    check_memory_fits(plan_memory(config.model, config.run, shard, shape.batch, shape.tokens, steps, threads),
                      session.local_size(), available_memory_bytes());
    if (leader && !config.run.output.empty()) check_output_destination(config.run.output);
    x = load_input(config.run.input, config.model, config.run.check_finite);
    mask = load_mask(config.run.mask, x.tokens);
    if (!mask.empty()) validate_mask(mask, x.tokens, steps);
    loaded = load_layer_weights(config.weights, config.model, shard, config.run.compute_dtype, config.run.check_finite);
  });
  // Replicated weights and the input must be the same everywhere, or the sum over ranks is wrong.
  const LayerWeights& w = loaded.weights;
  phases.agree("the replicated weights (wq_a, q_norm, wkv_a, kv_norm)",
               std::to_string(fingerprint({&w.wq_a, &w.q_norm, &w.wkv_a, &w.kv_norm})));
  phases.agree("the input x", std::to_string(fingerprint({&x.values})));
  phases.agree("the mask (run.mask)", std::to_string(fingerprint({&mask})));

  if (leader) {
    std::printf("mla_run: %s; backend %s, world %d, compute %s\n", config_path.c_str(), to_string(backend),
                comm.world(), to_string(config.run.compute_dtype));
    print_model(config.model);
    std::printf("input: x [%ld, %ld, %ld] from %s; %zu steps; mask: %s\n", x.batch, x.tokens, x.dim,
                x.description.c_str(), steps.size(), mask.empty() ? "causal" : config.run.mask.c_str());
  }
  std::fflush(stdout);
  std::printf("%s %s, %d threads %s; weights: %s, stored %s, %s as fp32 compute copies%s\n", label.c_str(),
              describe(shard).c_str(), threads, rank_threads.placement.c_str(), loaded.description.c_str(), loaded.storage_dtype.c_str(),
              format_bytes(loaded.weights.bytes()).c_str(),
              backend == Backend::Cuda ? ", uploaded to the GPU in the compute precision" : "");
  size_t step_index = 0;
  RunOptions options;
  options.on_step = [&](const StepReport& step) { print_step(label, step_index++, step); };
  options.check_finite = config.run.check_finite;
  options.fault = config.fault;
  options.watchdog = &watchdog;
  RunResult result;
  if (backend == Backend::Cuda) {
#if MLA_HAVE_CUDA
    result = run_on_cuda(config, session, phases, shard, loaded.weights, x, steps, mask, options);
#endif
  } else {
    MlaLayer layer(config.model, shard, std::move(loaded.weights), config.run);
    std::printf("%s kv cache: [%ld, %ld, %ld] latent (c_n | k_pe), %s, shared by both formulations\n", label.c_str(),
                config.model.max_batch_size, config.model.max_seq_len,
                config.model.kv_lora_rank + config.model.qk_rope_head_dim, format_bytes(layer.kv_cache_bytes()).c_str());
    result = run_schedule(layer, comm, x, steps, mask, options);
  }
  watchdog.progress("writing the output");
  std::fflush(stdout);
  if (config.parallel.check_identical_output) {
    phases.agree("the output y (parallel.check_identical_output)", std::to_string(fingerprint({&result.y})));
    if (leader) std::printf("check: y is bitwise identical on all %d ranks\n", comm.world());
  }
  if (leader) {
    std::printf("total: %.3f ms for %zu steps (all-reduce %.3f ms)\n", result.total_ms, result.steps.size(),
                result.allreduce_ms);
  }
  phases.run([&] {
    if (!leader || config.run.output.empty()) return;
    write_safetensors_f32(config.run.output, {{"y", {x.batch, x.tokens, x.dim}, result.y.data()}},
                          {{"config", config_path}, {"compute_dtype", to_string(config.run.compute_dtype)},
                           {"world", std::to_string(comm.world())}});
  });
  if (leader) {
    if (config.run.output.empty()) {
      std::printf("output: not written (run.output is empty)\n");
    } else {
      std::printf("output: y [%ld, %ld, %ld] f32 -> %s\n", x.batch, x.tokens, x.dim, config.run.output.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace mla

namespace {

// The limit for MPI's start-up, before the config is agreed: parallel.timeout_s, read ahead so that
// a peer stalled in start-up is caught too, but at least kMinStartupSeconds, since a loaded machine
// can take seconds in MPI_Init. A config that does not load gets the default here, and its error
// from the first phase.
constexpr double kMinStartupSeconds = 10.0;

double startup_timeout(const std::string& config_path, const std::vector<std::string>& overrides) {
  try {
    const double timeout_s = mla::load_config(config_path, overrides).parallel.timeout_s;
    return timeout_s <= 0 ? 0 : std::max(timeout_s, kMinStartupSeconds);
  } catch (const std::exception&) {
    return mla::Watchdog::kDefaultTimeoutSeconds;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool leader = mla::launcher_rank() == "0";
  CLI::App app{"Runs one MLA layer forward over a schedule of prefill, chunk and decode steps."};
  std::string config_path;
  std::vector<std::string> overrides;
  app.add_option("config", config_path, "YAML config (sections model, weights, run, parallel)")->required();
  app.add_option("--set", overrides, "override a config key: section.key=value (value read as YAML); repeatable");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return leader ? app.exit(help) : 0;
  } catch (const CLI::ParseError& error) {
    if (leader) std::fprintf(stderr, "mla_run: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  }
  return mla::run_mpi_command("mla_run", &argc, &argv, startup_timeout(config_path, overrides),
                              [&](mla::MpiSession& session) { return mla::run(session, config_path, overrides); });
}
