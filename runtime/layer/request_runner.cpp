#include "runtime/layer/request_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/io/safetensors.h"
#include "runtime/layer/latent_cache.h"

namespace mla {

RequestInputs load_request_inputs(const InputConfig& input, const std::vector<RequestConfig>& requests,
                                  const ModelArgs& model, bool check_finite) {
  RequestInputs inputs;
  inputs.dim = model.dim;
  if (input.random) {
    inputs.description = "random per request, seed " + std::to_string(input.seed);
    for (const RequestConfig& request : requests) {
      std::vector<float>& x =
          inputs.x.emplace_back(static_cast<size_t>((request.prompt + request.generate) * model.dim));
      const uint64_t key = random_stream_key(input.seed, "x." + request.name);
      for (size_t i = 0; i < x.size(); ++i) x[i] = random_uniform(key, i);
    }
    return inputs;
  }
  const SafetensorsFile file = SafetensorsFile::open(input.path);
  inputs.description = input.path + ", one tensor x.<name> per request";
  for (const RequestConfig& request : requests) {
    const std::string name = "x." + request.name;
    const TensorInfo& info = file.info(name);
    const std::vector<int64_t> shape = {request.prompt + request.generate, model.dim};
    if ((info.dtype != DType::F32 && info.dtype != DType::BF16) || info.shape != shape) {
      throw UserError(input.path + ": tensor '" + name + "' must be F32 or BF16 of shape [" + std::to_string(shape[0]) +
                      ", " + std::to_string(shape[1]) + "] (request " + request.name + "'s prompt + generate, dim)");
    }
    std::vector<float>& x = inputs.x.emplace_back(file.read_f32(name));
    for (size_t i = 0; check_finite && i < x.size(); ++i) {
      if (!std::isfinite(x[i])) {
        throw UserError(input.path + ": tensor '" + name + "': element " + std::to_string(i) + " is not finite");
      }
    }
  }
  return inputs;
}

RequestLimits request_limits(const ModelArgs& model, const RunConfig& run, int64_t context_parallel) {
  const LatentCacheShape cache =
      latent_cache_shape(model, run.kv_cache, run.compute_dtype == ComputeDType::BF16, context_parallel);
  RequestLimits limits;
  limits.slots = model.max_batch_size;
  limits.max_seq_len = model.max_seq_len;
  limits.max_step_tokens = run.max_step_tokens;
  limits.page_size = cache.page_size;
  limits.pages = cache.pages;
  limits.context_parallel = context_parallel;
  return limits;
}

RequestRunResult run_requests(StepExecutor& executor, const std::vector<RequestConfig>& requests,
                              const RequestInputs& inputs, const std::vector<PlannedStep>& plan,
                              const RunOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  const int64_t dim = inputs.dim;
  RequestRunResult result;
  result.first_step.assign(requests.size(), -1);
  result.last_step.assign(requests.size(), -1);
  for (const RequestConfig& request : requests) {
    result.y.emplace_back(static_cast<size_t>((request.prompt + request.generate) * dim), 0.0f);
  }
  result.cache_pool_bytes = executor.cache_pool_bytes();
  std::vector<float> step_x, step_y;
  for (size_t index = 0; index < plan.size(); ++index) {
    const PlannedStep& planned = plan[index];
    if (options.watchdog != nullptr) options.watchdog->progress("step " + std::to_string(index));
    if (static_cast<int64_t>(index) == options.hold_step && options.hold) options.hold();
    const int64_t tokens = planned.step.total_tokens();
    step_x.resize(static_cast<size_t>(tokens * dim));
    step_y.resize(step_x.size());
    int64_t row = 0;
    for (size_t i = 0; i < planned.step.sequences.size(); ++i) {
      const SequenceStep& sequence = planned.step.sequences[i];
      const std::vector<float>& x = inputs.x[static_cast<size_t>(planned.request[i])];
      std::memcpy(step_x.data() + row * dim, x.data() + sequence.start_pos * dim,
                  static_cast<size_t>(sequence.new_tokens * dim) * sizeof(float));
      row += sequence.new_tokens;
    }
    StepReport report = executor.forward_ragged(step_x.data(), planned.step);
    report.prefill_tokens = planned.prefill_tokens;
    report.decode_tokens = planned.decode_tokens;
    result.peak_cache_bytes_in_use = std::max(result.peak_cache_bytes_in_use, executor.cache_bytes_in_use());
    const double reduce_ms = reduce_step(executor, options, index);
    result.allreduce_ms += reduce_ms;
    report.time_ms += reduce_ms;
    executor.copy_output(step_y.data());
    row = 0;
    for (size_t i = 0; i < planned.step.sequences.size(); ++i) {
      const SequenceStep& sequence = planned.step.sequences[i];
      const size_t request = static_cast<size_t>(planned.request[i]);
      std::memcpy(result.y[request].data() + sequence.start_pos * dim, step_y.data() + row * dim,
                  static_cast<size_t>(sequence.new_tokens * dim) * sizeof(float));
      row += sequence.new_tokens;
      if (sequence.new_tokens == 0) continue;
      if (result.first_step[request] < 0) result.first_step[request] = static_cast<int64_t>(index);
      result.last_step[request] = static_cast<int64_t>(index);
    }
    for (const int64_t request : planned.finished) {
      const auto place = std::find(planned.request.begin(), planned.request.end(), request);
      executor.release_sequence(planned.step.sequences[static_cast<size_t>(place - planned.request.begin())].slot);
    }
    if (options.on_step) options.on_step(report);
    result.steps.push_back(report);
  }
  result.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace mla
