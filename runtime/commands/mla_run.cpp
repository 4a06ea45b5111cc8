// mla_run CONFIG.yaml [--set section.key=value ...]
//
// Loads the config, this rank's weights and the input, runs the schedule (prefill, chunks,
// decode steps) through the layer, prints what it did per step and writes y atomically.
// Exit codes: 0 done, 2 bad input (config, files, shapes), 3 a rank failed, 1 anything else.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "parallel/communicator.h"
#include "parallel/mpi_session.h"
#include "parallel/rank_agreement.h"
#include "parallel/sharding.h"
#include "parallel/thread_placement.h"
#include "parallel/watchdog.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/base/user_files.h"
#include "runtime/bench/machine_info.h"
#include "runtime/commands/mla_run_requests.h"
#include "runtime/commands/run_log.h"
#include "runtime/io/config.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/weights.h"
#include "runtime/layer/backend.h"
#include "runtime/layer/latent_cache.h"
#include "runtime/layer/memory_plan.h"
#include "runtime/layer/mla_layer.h"
#include "runtime/layer/runner.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "parallel/gpu_communicator.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/mla_layer_cuda.h"
#endif

namespace mla {
namespace {

#if MLA_HAVE_CUDA
// The CUDA backend: a GPU per rank (local rank modulo the node's devices, so ranks may share one),
// the layer's buffers sized once for this run's schedule, the partial outputs summed as
// parallel.communicator says (NCCL on the layer's stream, or MPI through host memory).
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
    layer = std::make_unique<CudaMlaLayer>(config.model, shard, weights, config.run, limits,
                                           config.parallel.context_parallel);
    std::printf("%s GPU %d (%s); device memory %s\n", session.label().c_str(), device, properties.name,
                layer->memory().describe().c_str());
  });
  GpuCommunicator comm, group;
  phases.run([&] {
    comm = make_gpu_communicator(config.parallel.communicator, session, layer->stream(), config.parallel.timeout_s);
    group = make_gpu_context_group(config.parallel.communicator, session,
                                   static_cast<int>(config.parallel.context_parallel), layer->stream(),
                                   config.parallel.timeout_s);
    layer->set_context_group(group.sum.get());
  });
  std::printf("%s sum over ranks: %s\n", session.label().c_str(), comm.description.c_str());
  std::printf("%s kv cache: %s, %s\n", session.label().c_str(), describe(layer->cache()).c_str(),
              describe_context(group.sum.get(), group.description).c_str());
  CudaStepExecutor executor(*layer, *comm.sum, mask, x.tokens);
  return run_schedule(executor, x, steps, mask, options);
}
#endif

// What one rank runs, read and checked by every rank together.
struct JobInputs {
  HeadShard shard;
  InputTensor x;
  std::vector<int64_t> steps;
  std::vector<float> mask;
  LoadedWeights loaded;
};

// Collective: the shard, schedule, input, mask and weights of this rank, with every check that
// can fail before the first step (the fault plan, memory, output paths); then the ranks agree on
// what must be the same everywhere.
JobInputs load_job_inputs(const MpiSession& session, Phases& phases, const Config& config, int threads) {
  JobInputs job;
  session.watchdog()->progress("loading the input and weights");
  phases.run([&] {
    job.shard = shard_model_heads(config.model.n_heads, session.world(), session.rank(), config.parallel.uneven_heads);
    const InputShape shape = input_shape(config.run.input, config.model);
    job.steps = config.run.schedule.steps(shape.tokens);
    const int64_t context_parallel = config.parallel.context_parallel;
    check_cache_holds(latent_cache_shape(config.model, config.run.kv_cache,
                                         config.run.compute_dtype == ComputeDType::BF16, context_parallel),
                      shape.batch, shape.tokens);
    check_debug_plan(config.debug, session.world(), job.steps.size());
    check_memory_fits(plan_memory(config.model, config.run, job.shard, shape.batch, shape.tokens, job.steps, threads,
                                  context_parallel),
                      session.local_size(), available_memory_bytes());
    if (session.rank() == 0) {
      for (const std::string& line :
           check_output_paths({{"run.output", config.run.output}}, files_read(config, session.world()))) {
        std::printf("mla_run: %s\n", line.c_str());
      }
    }
    job.x = load_input(config.run.input, config.model, config.run.check_finite);
    job.mask = load_mask(config.run.mask, job.x.tokens);
    if (!job.mask.empty()) validate_mask(job.mask, job.x.tokens, job.steps);
    job.loaded =
        load_layer_weights(config.weights, config.model, job.shard, config.run.compute_dtype, config.run.check_finite);
  });
  // Replicated weights and the input must be the same everywhere, or the sum over ranks is wrong.
  const LayerWeights& w = job.loaded.weights;
  phases.agree("the replicated weights (wq_a, q_norm, wkv_a, kv_norm)",
               std::to_string(fingerprint({&w.wq_a, &w.q_norm, &w.wkv_a, &w.kv_norm})));
  phases.agree("the input x", std::to_string(fingerprint({&job.x.values})));
  phases.agree("the mask (run.mask)", std::to_string(fingerprint({&job.mask})));
  return job;
}

void print_job(const MpiSession& session, const Config& config, const std::string& config_path, Backend backend,
               const JobInputs& job, const RankThreads& rank_threads) {
  if (session.rank() == 0) {
    std::printf("mla_run: %s; backend %s, world %d, compute %s\n", config_path.c_str(), to_string(backend),
                session.world(), to_string(config.run.compute_dtype));
    print_model(config.model);
    std::printf("input: x [%ld, %ld, %ld] from %s; %zu steps; mask: %s\n", job.x.batch, job.x.tokens, job.x.dim,
                job.x.description.c_str(), job.steps.size(), job.mask.empty() ? "causal" : config.run.mask.c_str());
  }
  std::fflush(stdout);
  std::printf("%s %s, %d threads %s; weights: %s, stored %s, %s loaded as %s%s\n", session.label().c_str(),
              describe(job.shard).c_str(), rank_threads.count, rank_threads.placement.c_str(),
              job.loaded.description.c_str(), job.loaded.storage_dtype.c_str(),
              format_bytes(static_cast<double>(job.loaded.weights.bytes())).c_str(),
              config.run.compute_dtype == ComputeDType::BF16 ? "fp32 buffers of bf16 values (the layer keeps bf16)"
                                                             : "fp32 compute copies",
              backend == Backend::Cuda ? ", uploaded to the GPU in the compute precision" : "");
}

// The schedule on this rank's backend; the layer takes the weights over.
RunResult run_layer(const MpiSession& session, Phases& phases, const Config& config, Backend backend, JobInputs& job) {
  const std::string label = session.label();
  const RunOptions options = run_options(session, config);
#if MLA_HAVE_CUDA
  if (backend == Backend::Cuda) {
    return run_on_cuda(config, session, phases, job.shard, job.loaded.weights, job.x, job.steps, job.mask, options);
  }
#else
  (void)phases;
  (void)backend;  // resolve_backend() gives cuda only in a CUDA build
#endif
  const std::unique_ptr<MpiCommunicator> group = context_group(session, config.parallel);
  MlaLayer layer(config.model, job.shard, std::move(job.loaded.weights), config.run, group.get());
  std::printf("%s kv cache: %s, %s\n", label.c_str(), describe(layer.cache()).c_str(),
              describe_context(group.get()).c_str());
  MpiCommunicator comm(session);
  return run_schedule(layer, comm, job.x, job.steps, job.mask, options);
}

int run(const MpiSession& session, const std::string& config_path, const std::vector<std::string>& overrides) {
  const bool leader = session.rank() == 0;
  Phases phases(session);
  Config config;
  Watchdog& watchdog = *session.watchdog();
  watchdog.progress("reading the config");
  Backend backend = Backend::Cpu;
  phases.run([&] {
    check_kernel_environment();
    config = load_config(config_path, overrides);
    backend = resolve_backend(config.run.backend, "run.backend");  // the ranks then agree on it
  });
  phases.agree("the configuration", config_text(config));
  phases.agree("the backend (run.backend as each rank resolved it)", to_string(backend));
  check_communicator(backend, config.parallel.communicator);
  check_context_parallel(config, session.world(), backend);
  watchdog.set_timeout(config.parallel.timeout_s);
  const RankThreads rank_threads =
      configure_rank_threads(config.run.threads, config.run.pin_threads, session.local_rank(), session.local_size());
  if (!config.run.schedule.requests.empty())
    return run_requests_job(session, phases, config, config_path, backend, rank_threads);

  JobInputs job = load_job_inputs(session, phases, config, rank_threads.count);
  print_job(session, config, config_path, backend, job, rank_threads);
  const RunResult result = run_layer(session, phases, config, backend, job);

  watchdog.progress("writing the output");
  std::fflush(stdout);
  if (config.parallel.check_identical_output) {
    phases.agree("the output y (parallel.check_identical_output)", std::to_string(fingerprint({&result.y})));
    if (leader) std::printf("check: y is bitwise identical on all %d ranks\n", session.world());
  }
  const std::vector<std::vector<std::string>> choices = gather_choices(session, result.steps);
  if (leader) {
    if (config.run.log == StepLog::Table) print_step_table(result.steps, choices);
    std::printf("total: %.3f ms for %zu steps (all-reduce %.3f ms)\n", result.total_ms, result.steps.size(),
                result.allreduce_ms);
    print_checksum({&result.y});
  }
  write_output(session, phases, config, config_path, {{"y", {job.x.batch, job.x.tokens, job.x.dim}, result.y.data()}},
               "y [" + std::to_string(job.x.batch) + ", " + std::to_string(job.x.tokens) + ", " +
                   std::to_string(job.x.dim) + "] f32");
  return 0;
}

}  // namespace
}  // namespace mla

namespace {

// parallel.timeout_s and debug.progress_file, read ahead so that a peer stalled in MPI's start-up
// is caught too (the watchdog gives the start-up at least Watchdog::kMinStartupSeconds). A config
// that does not load gets the defaults here, and its error from the first phase.
mla::WatchdogSettings watchdog_settings(const std::string& config_path, const std::vector<std::string>& overrides) {
  mla::WatchdogSettings settings;
  try {
    const mla::Config config = mla::load_config(config_path, overrides);
    settings.timeout_s = config.parallel.timeout_s;
    settings.progress_file = config.debug.progress_file;
  } catch (const std::exception&) {
  }
  return settings;
}

}  // namespace

int main(int argc, char** argv) {
  const bool leader = mla::launcher_rank() == "0";
  CLI::App app{"Runs one MLA layer forward over a schedule of prefill, chunk and decode steps."};
  app.option_defaults()->always_capture_default();
  app.footer(
      "Exit codes: 0 done; 2 bad input (the message names the key, file or tensor); 3 a rank failed during\n"
      "the run (died, stalled past parallel.timeout_s, non-finite output); 1 an internal error.");
  std::string config_path;
  std::vector<std::string> overrides;
  bool verbose = false;
  app.add_option("config", config_path, "YAML config (sections model, weights, run, parallel, debug)")->required();
  app.add_option("--set", overrides, "override a config key: section.key=value (value read as YAML); repeatable");
  app.add_flag("--verbose", verbose, "every rank prints every step as it ends (the same as --set run.log=steps)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return leader ? app.exit(help) : 0;
  } catch (const CLI::ParseError& error) {
    if (leader) std::fprintf(stderr, "mla_run: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  }
  if (verbose) overrides.push_back("run.log=steps");
  return mla::run_mpi_command("mla_run", &argc, &argv, watchdog_settings(config_path, overrides),
                              [&](mla::MpiSession& session) {
                                session.watchdog()->set_before_exit(mla::remove_unfinished_temporaries);
                                return mla::run(session, config_path, overrides);
                              });
}
