#include "runtime/runner.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "runtime/errors.h"
#include "runtime/random_values.h"
#include "runtime/safetensors.h"

namespace mla {

namespace {

void check_finite(const std::vector<float>& values, const std::string& what) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw UserError(what + ": element " + std::to_string(i) + " is not finite (" + std::to_string(values[i]) + ")");
    }
  }
}

// Every query row needs one position it may see, or its softmax divides by zero.
void check_mask_rows(const std::vector<float>& mask, int64_t tokens, int64_t start_pos, int64_t kv_len) {
  for (int64_t row = start_pos; row < kv_len; ++row) {
    bool any_visible = false;
    for (int64_t t = 0; t < kv_len && !any_visible; ++t) any_visible = std::isfinite(mask[row * tokens + t]);
    if (!any_visible) {
      throw UserError("run.mask: row " + std::to_string(row) + " masks every one of the " + std::to_string(kv_len) +
                      " positions visible at that step");
    }
  }
}

}  // namespace

InputTensor load_input(const InputConfig& input, const ModelArgs& model) {
  InputTensor x;
  if (input.random) {
    x.batch = input.batch;
    x.tokens = input.tokens;
    x.dim = model.dim;
    x.values.resize(static_cast<size_t>(x.batch * x.tokens * x.dim));
    const uint64_t key = random_stream_key(input.seed, "x");
    for (size_t i = 0; i < x.values.size(); ++i) x.values[i] = random_uniform(key, i);
    x.description = "random x, seed " + std::to_string(input.seed);
  } else {
    const SafetensorsFile file = SafetensorsFile::open(input.path);
    const TensorInfo& info = file.info("x");
    if (info.dtype != DType::F32 && info.dtype != DType::BF16) {
      throw UserError(input.path + ": tensor 'x' has dtype " + std::string(dtype_name(info.dtype)) + ", expected F32 or BF16");
    }
    if (info.shape.size() != 3 || info.shape[2] != model.dim) {
      throw UserError(input.path + ": tensor 'x' must have shape [batch, tokens, " + std::to_string(model.dim) +
                      "] (model.dim)");
    }
    x.batch = info.shape[0];
    x.tokens = info.shape[1];
    x.dim = info.shape[2];
    x.values = file.read_f32("x");
    x.description = input.path + " (" + dtype_name(info.dtype) + ")";
    check_finite(x.values, input.path + ": tensor 'x'");
  }
  if (x.batch < 1 || x.tokens < 1) throw UserError("run.input: the input holds no tokens");
  if (x.batch > model.max_batch_size) {
    throw UserError("run.input: batch " + std::to_string(x.batch) + " is over model.max_batch_size " +
                    std::to_string(model.max_batch_size));
  }
  if (x.tokens > model.max_seq_len) {
    throw UserError("run.input: " + std::to_string(x.tokens) + " tokens do not fit model.max_seq_len " +
                    std::to_string(model.max_seq_len));
  }
  return x;
}

std::vector<float> load_mask(const std::string& path, int64_t tokens) {
  if (path.empty()) return {};
  const SafetensorsFile file = SafetensorsFile::open(path);
  const TensorInfo& info = file.info("mask");
  if (info.dtype != DType::F32 || info.shape != std::vector<int64_t>{tokens, tokens}) {
    throw UserError(path + ": tensor 'mask' must be F32 of shape [" + std::to_string(tokens) + ", " +
                    std::to_string(tokens) + "] (the input's tokens)");
  }
  std::vector<float> mask = file.read_f32("mask");
  for (size_t i = 0; i < mask.size(); ++i) {
    // -inf hides a position; NaN or +inf would poison the softmax.
    if (std::isnan(mask[i]) || mask[i] == INFINITY) {
      throw UserError(path + ": tensor 'mask' element " + std::to_string(i) + " is " + std::to_string(mask[i]) +
                      "; entries must be finite or -inf");
    }
  }
  return mask;
}

RunResult run_schedule(MlaLayer& layer, Communicator& comm, const InputTensor& x, const std::vector<int64_t>& steps,
                       const std::vector<float>& mask, const std::function<void(const StepReport&)>& on_step) {
  const auto started = std::chrono::steady_clock::now();
  RunResult result;
  result.y.assign(x.values.size(), 0.0f);
  std::vector<float> step_x, step_y;
  int64_t start_pos = 0;
  for (const int64_t seq : steps) {
    const int64_t kv_len = start_pos + seq;
    if (!mask.empty()) check_mask_rows(mask, x.tokens, start_pos, kv_len);
    step_x.resize(static_cast<size_t>(x.batch * seq * x.dim));
    step_y.resize(step_x.size());
    for (int64_t b = 0; b < x.batch; ++b) {
      std::memcpy(step_x.data() + b * seq * x.dim, x.values.data() + (b * x.tokens + start_pos) * x.dim,
                  static_cast<size_t>(seq * x.dim) * sizeof(float));
    }
    const float* step_mask = mask.empty() ? nullptr : mask.data() + start_pos * x.tokens;
    StepReport report = layer.forward(step_x.data(), x.batch, seq, start_pos, step_mask, x.tokens, step_y.data());
    const auto reduce_started = std::chrono::steady_clock::now();
    comm.allreduce_sum(step_y.data(), static_cast<int64_t>(step_y.size()));
    const double reduce_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - reduce_started).count();
    result.allreduce_ms += reduce_ms;
    report.time_ms += reduce_ms;
    for (int64_t b = 0; b < x.batch; ++b) {
      std::memcpy(result.y.data() + (b * x.tokens + start_pos) * x.dim, step_y.data() + b * seq * x.dim,
                  static_cast<size_t>(seq * x.dim) * sizeof(float));
    }
    if (on_step) on_step(report);
    result.steps.push_back(report);
    start_pos = kv_len;
  }
  result.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace mla
