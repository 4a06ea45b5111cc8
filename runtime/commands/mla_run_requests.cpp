#include "runtime/commands/mla_run_requests.h"

#include <algorithm>
#include <cstdio>
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
    job.plan = plan_requests(requests, request_limits(config.model, config.run));
    check_debug_plan(config.debug, session.world(), job.plan.size());
    for (const RequestConfig& request : requests) job.total_tokens += request.prompt + request.generate;
    check_memory_fits(plan_request_memory(config.model, config.run, job.shard, job.total_tokens, threads),
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

}  // namespace

int run_requests_job(const MpiSession& session, Phases& phases, const Config& config, const std::string& config_path,
                     const RankThreads& rank_threads) {
  const bool leader = session.rank() == 0;
  const std::vector<RequestConfig>& requests = config.run.schedule.requests;
  RequestJob job = load_request_job(session, phases, config, rank_threads.count);
  if (leader) {
    std::printf("mla_run: %s; continuous batching, backend cpu, world %d, compute %s\n", config_path.c_str(),
                session.world(), to_string(config.run.compute_dtype));
    print_model(config.model);
    std::printf("requests: %zu (%ld tokens), input %s; %zu steps of at most %ld tokens (run.max_step_tokens)\n",
                requests.size(), job.total_tokens, job.inputs.description.c_str(), job.plan.size(),
                config.run.max_step_tokens);
  }
  std::fflush(stdout);
  MlaLayer layer(config.model, job.shard, std::move(job.loaded.weights), config.run);
  std::printf("%s %s, %d threads %s; kv cache: %s\n", session.label().c_str(), describe(job.shard).c_str(),
              rank_threads.count, rank_threads.placement.c_str(), describe(layer.cache()).c_str());
  MpiCommunicator comm(session);
  CpuStepExecutor executor(layer, comm);
  const RequestRunResult result = run_requests(executor, requests, job.inputs, job.plan, run_options(session, config));

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
