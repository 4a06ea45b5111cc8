// Runs continuous batching's planned steps (request_schedule.h) through one rank's executor: each
// step's tokens packed from the requests' inputs, the partial output summed over ranks and handed
// back to each request, a finished request's slot and pages freed after its last step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/layer/request_schedule.h"
#include "runtime/layer/runner.h"

namespace mla {

// Each request's input tokens, [prompt + generate, dim], in the order of run.schedule.requests.
struct RequestInputs {
  std::vector<std::vector<float>> x;
  int64_t dim = 0;
  std::string description;
};

// run.input for requests: the tensors "x.<name>" [prompt + generate, dim] (F32 or BF16) of a
// safetensors file, or seeded random values U(-1, 1) that depend only on the seed, the request's
// name and the element's index. Throws UserError naming the file and tensor.
RequestInputs load_request_inputs(const InputConfig& input, const std::vector<RequestConfig>& requests,
                                  const ModelArgs& model, bool check_finite = true);

struct RequestRunResult {
  std::vector<std::vector<float>> y;  // per request, [prompt + generate, dim]
  std::vector<StepReport> steps;
  std::vector<int64_t> first_step, last_step;  // per request: its first and last step's index
  double total_ms = 0.0;
  double allreduce_ms = 0.0;
  int64_t cache_pool_bytes = 0;
  int64_t peak_cache_bytes_in_use = 0;  // after a step's pages were taken, before any were freed
};

RequestRunResult run_requests(StepExecutor& executor, const std::vector<RequestConfig>& requests,
                              const RequestInputs& inputs, const std::vector<PlannedStep>& plan,
                              const RunOptions& options = {});

// The limits plan_requests() plans within, from the model and run.kv_cache (a rank's pool, with
// parallel.context_parallel).
RequestLimits request_limits(const ModelArgs& model, const RunConfig& run, int64_t context_parallel = 1);

}  // namespace mla
