#include "runtime/commands/mla_run_requests.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/base/user_files.h"
#include "runtime/bench/harness.h"
#include "runtime/commands/run_log.h"
#include "runtime/io/weights.h"
#include "runtime/layer/latent_cache.h"
#include "runtime/layer/memory_plan.h"
#include "runtime/layer/request_runner.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "parallel/gpu_communicator.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/mla_layer_cuda.h"
#endif

namespace mla {

namespace {

struct RequestJob {
  HeadShard shard;
  std::vector<PlannedStep> plan;
  RequestInputs inputs;
  LoadedWeights loaded;
  int64_t total_tokens = 0;
};

// Collective: the shard, the planned steps, the inputs and weights of this rank, with every check
// that can fail before the first step; then the ranks agree on what must be the same everywhere.
RequestJob load_request_job(const MpiSession& session, Phases& phases, const Config& config, int threads) {
  const std::vector<RequestConfig>& requests = config.run.schedule.requests;
  RequestJob job;
  session.watchdog()->progress("planning the requests and loading the weights");
  phases.run([&] {
    job.shard = shard_model_heads(config.model.n_heads, session.world(), session.rank(), config.parallel.uneven_heads);
    job.plan = plan_requests(requests, request_limits(config.model, config.run, config.parallel.context_parallel));
    check_debug_plan(config.debug, session.world(), job.plan.size());
    for (const RequestConfig& request : requests) job.total_tokens += request.prompt + request.generate;
    check_memory_fits(plan_request_memory(config.model, config.run, job.shard, job.total_tokens, threads,
                                          config.parallel.context_parallel),
                      session.local_size(), available_memory_bytes());
    if (session.rank() == 0) {
      for (const std::string& line :
           check_output_paths({{"run.output", config.run.output}}, files_read(config, session.world()))) {
        std::printf("mla_run: %s\n", line.c_str());
      }
    }
    job.inputs = load_request_inputs(config.run.input, requests, config.model, config.run.check_finite);
    job.loaded =
        load_layer_weights(config.weights, config.model, job.shard, config.run.compute_dtype, config.run.check_finite);
  });
  const LayerWeights& w = job.loaded.weights;
  phases.agree("the replicated weights (wq_a, q_norm, wkv_a, kv_norm)",
               std::to_string(fingerprint({&w.wq_a, &w.q_norm, &w.wkv_a, &w.kv_norm})));
  std::vector<const std::vector<float>*> inputs;
  for (const std::vector<float>& x : job.inputs.x) inputs.push_back(&x);
  phases.agree("the requests' inputs", std::to_string(fingerprint(inputs)));
  return job;
}

// Per request: when it arrived, ran and finished (in steps), and the time from the start of its
// first step to the end of its last; then the run's throughput, step times and cache memory.
void print_request_summary(const Config& config, const RequestJob& job, const RequestRunResult& result) {
  const std::vector<RequestConfig>& requests = config.run.schedule.requests;
  std::vector<double> step_end_ms;
  double elapsed = 0.0;
  std::vector<double> step_ms;
  for (const StepReport& step : result.steps) {
    elapsed += step.time_ms;
    step_end_ms.push_back(elapsed);
    step_ms.push_back(step.time_ms);
  }
  std::printf("%-12s  %7s  %8s  %7s  %10s  %9s  %9s\n", "request", "prompt", "generate", "arrival", "steps", "span ms",
              "clock");
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t first = result.first_step[i], last = result.last_step[i];
    const double begin_ms = first > 0 ? step_end_ms[static_cast<size_t>(first - 1)] : 0.0;
    std::printf("%-12s  %7ld  %8ld  %7ld  %4ld..%-4ld  %9.3f  %4ld..%ld\n", requests[i].name.c_str(),
                requests[i].prompt, requests[i].generate, requests[i].arrival, first, last,
                step_end_ms[static_cast<size_t>(last)] - begin_ms, job.plan[static_cast<size_t>(first)].clock,
                job.plan[static_cast<size_t>(last)].clock);
  }
  const TimeSummary steps = summarize_times(step_ms);
  std::printf("requests: %zu, %ld tokens in %zu steps, %.1f tokens/s; step ms median %.3f, p90 %.3f, max %.3f\n",
              requests.size(), job.total_tokens, result.steps.size(),
              static_cast<double>(job.total_tokens) / (std::max(elapsed, 1e-9) * 1e-3), steps.median, steps.p90,
              steps.max);
  std::printf("kv cache (rank 0): pool %s, at most %s held\n",
              format_bytes(static_cast<double>(result.cache_pool_bytes)).c_str(),
              format_bytes(static_cast<double>(result.peak_cache_bytes_in_use)).c_str());
}

// The steps on one rank's layer: the CPU layer summing over MPI, or (run.backend cuda) the CUDA
// layer on this rank's GPU, sized for the plan's largest step, summing as
// parallel.communicator says.
RequestRunResult run_on_backend(const MpiSession& session, Phases& phases, const Config& config, Backend backend,
                                const RankThreads& rank_threads, RequestJob& job) {
  const std::vector<RequestConfig>& requests = config.run.schedule.requests;
  const RunOptions options = run_options(session, config);
#if MLA_HAVE_CUDA
  if (backend == Backend::Cuda) {
    std::unique_ptr<CudaMlaLayer> layer;
    phases.run([&] {
      const int device = session.local_rank() % cuda_device_count();
      CUDA_CHECK(cudaSetDevice(device));
      CudaLayerLimits limits;
      for (const PlannedStep& planned : job.plan) {
        limits.max_batch = std::max(limits.max_batch, static_cast<int64_t>(planned.step.sequences.size()));
        limits.max_step_len = std::max(limits.max_step_len, planned.step.max_new_tokens());
        limits.max_kv_len = std::max(limits.max_kv_len, planned.step.max_kv_len());
        limits.max_step_tokens = std::max(limits.max_step_tokens, planned.step.total_tokens());
      }
      layer = std::make_unique<CudaMlaLayer>(config.model, job.shard, job.loaded.weights, config.run, limits,
                                             config.parallel.context_parallel);
      std::printf("%s %s, GPU %d; kv cache: %s; device memory %s\n", session.label().c_str(),
                  describe(job.shard).c_str(), device, describe(layer->cache()).c_str(),
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
    std::printf("%s sum over ranks: %s; kv cache %s\n", session.label().c_str(), comm.description.c_str(),
                describe_context(group.sum.get(), group.description).c_str());
    CudaStepExecutor executor(*layer, *comm.sum, {}, 0);
    return run_requests(executor, requests, job.inputs, job.plan, options);
  }
#else
  (void)backend;
  (void)phases;
#endif
  const std::unique_ptr<MpiCommunicator> group = context_group(session, config.parallel);
  MlaLayer layer(config.model, job.shard, std::move(job.loaded.weights), config.run, group.get());
  std::printf("%s %s, %d threads %s; kv cache: %s, %s\n", session.label().c_str(), describe(job.shard).c_str(),
              rank_threads.count, rank_threads.placement.c_str(), describe(layer.cache()).c_str(),
              describe_context(group.get()).c_str());
  MpiCommunicator comm(session);
  CpuStepExecutor executor(layer, comm);
  return run_requests(executor, requests, job.inputs, job.plan, options);
}

}  // namespace

int run_requests_job(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                     Backend backend, const RankThreads& rank_threads) {
  const bool leader = session.rank() == 0;
  const std::vector<RequestConfig>& requests = config.run.schedule.requests;
  RequestJob job = load_request_job(session, phases, config, rank_threads.count);
  if (leader) {
    std::printf("mla_run: %s; continuous batching, backend %s, world %d, compute %s\n", config_path.c_str(),
                to_string(backend), session.world(), to_string(config.run.compute_dtype));
    print_model(config.model);
    std::printf("requests: %zu (%ld tokens), input %s; %zu steps of at most %ld tokens (run.max_step_tokens)\n",
                requests.size(), job.total_tokens, job.inputs.description.c_str(), job.plan.size(),
                config.run.max_step_tokens);
  }
  std::fflush(stdout);
  const RequestRunResult result = run_on_backend(session, phases, config, backend, rank_threads, job);

  session.watchdog()->progress("writing the output");
  std::fflush(stdout);
  std::vector<const std::vector<float>*> outputs;
  for (const std::vector<float>& y : result.y) outputs.push_back(&y);
  if (config.parallel.check_identical_output) {
    phases.agree("the output y (parallel.check_identical_output)", std::to_string(fingerprint(outputs)));
    if (leader) std::printf("check: y is bitwise identical on all %d ranks\n", session.world());
  }
  const std::vector<std::vector<std::string>> choices = gather_choices(session, result.steps);
  if (leader) {
    if (config.run.log == StepLog::Table) print_step_table(result.steps, choices);
    print_request_summary(config, job, result);
    print_checksum(outputs);
  }
  std::vector<OutputTensor> tensors;
  for (size_t i = 0; i < requests.size(); ++i) {
    tensors.push_back(
        {"y." + requests[i].name, {requests[i].prompt + requests[i].generate, config.model.dim}, result.y[i].data()});
  }
  write_output(session, phases, config, config_path, tensors,
               std::to_string(requests.size()) + " tensors y.<request> [prompt + generate, " +
                   std::to_string(config.model.dim) + "] f32");
  return 0;
}

}  // namespace mla
