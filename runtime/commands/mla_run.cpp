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
#include "runtime/io/config.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/weights.h"
#include "runtime/layer/backend.h"
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
    layer = std::make_unique<CudaMlaLayer>(config.model, shard, weights, config.run, limits);
    std::printf("%s GPU %d (%s); device memory %s\n", session.label().c_str(), device, properties.name,
                layer->memory().describe().c_str());
  });
  GpuCommunicator comm;
  phases.run([&] {
    comm = make_gpu_communicator(config.parallel.communicator, session, layer->stream(), config.parallel.timeout_s);
  });
  std::printf("%s sum over ranks: %s\n", session.label().c_str(), comm.description.c_str());
  CudaStepExecutor executor(*layer, *comm.sum, mask, x.tokens);
  return run_schedule(executor, x, steps, mask, options);
}
#endif

void print_model(const ModelArgs& m) {
  std::printf("model: dim %ld, n_heads %ld, q_lora_rank %ld, kv_lora_rank %ld, dq %ld (%ld nope + %ld rope), dv %ld\n",
              m.dim, m.n_heads, m.q_lora_rank, m.kv_lora_rank, m.qk_head_dim(), m.qk_nope_head_dim, m.qk_rope_head_dim,
              m.v_head_dim);
  std::printf("rope: theta %g, YaRN %s, softmax scale %.6g\n", m.rope_theta,
              m.yarn_active() ? ("on (factor " + std::to_string(m.rope_factor) + ")").c_str() : "off",
              m.softmax_scale());
}

const char* step_phase(const StepReport& step) {
  return step.seq == 1 && step.start_pos > 0 ? "decode" : (step.start_pos == 0 ? "prefill" : "chunk");
}

// run.log: steps (or --verbose): every rank prints every step as it ends.
void print_step(const std::string& label, size_t index, const StepReport& step) {
  std::printf("%s step %zu: %-7s start_pos %ld tokens %ld kv_len %ld -> %s path, %s (%s); workspace %s; %.3f ms\n",
              label.c_str(), index, step_phase(step), step.start_pos, step.seq, step.kv_len, to_string(step.plan.path),
              to_string(step.plan.formulation), step.plan.reason.c_str(),
              format_bytes(static_cast<double>(step.attention_workspace_bytes)).c_str(), step.time_ms);
}

// What one rank chose for one step: "fast, absorb".
std::string step_choice(const StepReport& step) {
  return std::string(to_string(step.plan.path)) + ", " + to_string(step.plan.formulation);
}

// Collective: every rank's choice per step, [rank][step], for rank 0's table.
std::vector<std::vector<std::string>> gather_choices(const MpiSession& session, const std::vector<StepReport>& steps) {
  std::string mine;
  for (const StepReport& step : steps) mine += step_choice(step) + "\n";
  std::vector<std::vector<std::string>> choices;
  for (const std::string& text : session.all_gather(mine)) {
    std::vector<std::string>& rank_choices = choices.emplace_back();
    for (size_t begin = 0, end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
      rank_choices.push_back(text.substr(begin, end - begin));
    }
  }
  return choices;
}

// The default log: rank 0's one table of the steps, the other ranks' choices where they differ,
// the reason for each distinct choice once, and a checksum of y to compare runs by.
void print_step_table(const RunResult& result, const std::vector<std::vector<std::string>>& choices) {
  std::printf("%5s  %-7s  %7s  %7s  %-8s  %-11s  %9s\n", "step", "phase", "tokens", "kv_len", "path", "formulation",
              "ms");
  std::vector<std::string> explained;
  for (size_t index = 0; index < result.steps.size(); ++index) {
    const StepReport& step = result.steps[index];
    std::string others;
    for (size_t rank = 1; rank < choices.size(); ++rank) {
      const std::string& choice = index < choices[rank].size() ? choices[rank][index] : "?";
      if (choice != step_choice(step))
        others += (others.empty() ? "  rank " : "; rank ") + std::to_string(rank) + ": " + choice;
    }
    std::printf("%5zu  %-7s  %7ld  %7ld  %-8s  %-11s  %9.3f%s\n", index, step_phase(step), step.seq, step.kv_len,
                to_string(step.plan.path), to_string(step.plan.formulation), step.time_ms, others.c_str());
  }
  for (size_t index = 0; index < result.steps.size(); ++index) {
    const StepReport& step = result.steps[index];
    if (std::find(explained.begin(), explained.end(), step_choice(step)) != explained.end()) continue;
    explained.push_back(step_choice(step));
    std::printf("why %s (step %zu, rank 0): %s\n", explained.back().c_str(), index, step.plan.reason.c_str());
  }
}

void print_checksum(const std::vector<float>& y) {
  double sum = 0.0, abs_sum = 0.0;
  for (const float value : y) {
    sum += value;
    abs_sum += std::fabs(value);
  }
  std::printf("y checksum: sum %.9g, sum|y| %.9g, fnv1a64 %016llx\n", sum, abs_sum,
              static_cast<unsigned long long>(fingerprint({&y})));
}

// debug.hold: the ranks exchange an agreement every 20 ms, reporting progress, until the job is
// ended from outside; a rank stopped then leaves its peers waiting in the agreement, and their
// watchdogs end the job.
[[noreturn]] void hold_until_ended(const MpiSession& session, int64_t step) {
  const std::string activity = "held at step " + std::to_string(step) + " (debug.hold)";
  std::string failure;
  for (;;) {
    session.watchdog()->progress(activity);
    session.all_ok(true, "", &failure);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// debug.fail must name a rank and a step that exist, or it would silently never fire.
void check_fault_plan(const FaultPlan& fault, int world, size_t steps) {
  if (fault.mode == FaultMode::None) return;
  if (fault.rank >= world) {
    throw UserError("debug.fail.rank: " + std::to_string(fault.rank) + " is not a rank of this world of " +
                    std::to_string(world));
  }
  if (fault.step >= static_cast<int64_t>(steps)) {
    throw UserError("debug.fail.step: " + std::to_string(fault.step) + " is not a step of this schedule of " +
                    std::to_string(steps) + " steps (counted from 0)");
  }
}

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
    try {
      job.shard = shard_heads(config.model.n_heads, session.world(), session.rank(), config.parallel.uneven_heads);
    } catch (const std::invalid_argument& error) {
      throw UserError(std::string("model.n_heads: ") + error.what());
    }
    const InputShape shape = input_shape(config.run.input, config.model);
    job.steps = config.run.schedule.steps(shape.tokens);
    check_fault_plan(config.debug.fail, session.world(), job.steps.size());
    if (config.debug.hold_step >= static_cast<int64_t>(job.steps.size())) {
      throw UserError("debug.hold.step: " + std::to_string(config.debug.hold_step) +
                      " is not a step of this schedule of " + std::to_string(job.steps.size()) +
                      " steps (counted from 0)");
    }
    check_memory_fits(plan_memory(config.model, config.run, job.shard, shape.batch, shape.tokens, job.steps, threads),
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
  RunOptions options;
  options.on_step = [&config, &label, step_index = size_t{0}](const StepReport& step) mutable {
    if (config.run.log == StepLog::Steps) print_step(label, step_index, step);
    ++step_index;
  };
  options.check_finite = config.run.check_finite;
  options.fault = config.debug.fail;
  options.hold_step = config.debug.hold_step;
  options.hold = [&] { hold_until_ended(session, config.debug.hold_step); };
  options.watchdog = session.watchdog();
#if MLA_HAVE_CUDA
  if (backend == Backend::Cuda) {
    return run_on_cuda(config, session, phases, job.shard, job.loaded.weights, job.x, job.steps, job.mask, options);
  }
#else
  (void)phases;
  (void)backend;  // resolve_backend() gives cuda only in a CUDA build
#endif
  MlaLayer layer(config.model, job.shard, std::move(job.loaded.weights), config.run);
  std::printf("%s kv cache: [%ld, %ld, %ld] latent (c_n | k_pe), %s, shared by both formulations\n", label.c_str(),
              config.model.max_batch_size, config.model.max_seq_len,
              config.model.kv_lora_rank + config.model.qk_rope_head_dim,
              format_bytes(static_cast<double>(layer.kv_cache_bytes())).c_str());
  MpiCommunicator comm(session);
  return run_schedule(layer, comm, job.x, job.steps, job.mask, options);
}

// The new y goes to a temporary file, and only once every rank has agreed that the run
// succeeded is it renamed into place: a run that reports failure leaves the old file.
void write_output(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                  const InputTensor& x, const RunResult& result) {
  const bool leader = session.rank() == 0;
  std::unique_ptr<AtomicFile> y_file;
  phases.run([&] {
    if (!leader || config.run.output.empty()) return;
    y_file = std::make_unique<AtomicFile>(config.run.output);
    write_safetensors_f32(*y_file, {{"y", {x.batch, x.tokens, x.dim}, result.y.data()}},
                          {{"config", config_path},
                           {"compute_dtype", to_string(config.run.compute_dtype)},
                           {"world", std::to_string(session.world())}});
    y_file->finish();
  });
  session.watchdog()->finish_run([&] {
    if (y_file) y_file->commit();
  });
  if (!leader) return;
  if (config.run.output.empty()) {
    std::printf("output: not written (run.output is empty)\n");
  } else {
    std::printf("output: y [%ld, %ld, %ld] f32 -> %s\n", x.batch, x.tokens, x.dim, config.run.output.c_str());
  }
  std::fflush(stdout);
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
  watchdog.set_timeout(config.parallel.timeout_s);
  const RankThreads rank_threads =
      configure_rank_threads(config.run.threads, config.run.pin_threads, session.local_rank(), session.local_size());

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
    if (config.run.log == StepLog::Table) print_step_table(result, choices);
    std::printf("total: %.3f ms for %zu steps (all-reduce %.3f ms)\n", result.total_ms, result.steps.size(),
                result.allreduce_ms);
    print_checksum(result.y);
  }
  write_output(session, phases, config, config_path, job.x, result);
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
