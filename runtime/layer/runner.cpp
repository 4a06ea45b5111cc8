#include "runtime/layer/runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <thread>

#include "kernels/cpu/finite_check.h"
#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/io/checkpoint.h"
#include "runtime/io/safetensors.h"

namespace mla {

namespace {

void require_finite(const std::vector<float>& values, const std::string& what) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw UserError(what + ": element " + std::to_string(i) + " is not finite (" + std::to_string(values[i]) + ")");
    }
  }
}

}  // namespace

InputShape input_shape(const InputConfig& input, const ModelArgs& model) {
  InputShape shape;
  if (input.random) {
    shape = {input.batch, input.tokens, "random x, seed " + std::to_string(input.seed)};
  } else {
    const SafetensorsFile file = SafetensorsFile::open(input.path);
    const TensorInfo& info = file.info("x");
    if (info.dtype != DType::F32 && info.dtype != DType::BF16) {
      throw UserError(input.path + ": tensor 'x' has dtype " + std::string(dtype_name(info.dtype)) +
                      ", expected F32 or BF16");
    }
    if (info.shape.size() != 3 || info.shape[2] != model.dim) {
      throw UserError(input.path + ": tensor 'x' must have shape [batch, tokens, " + std::to_string(model.dim) +
                      "] (model.dim)");
    }
    shape = {info.shape[0], info.shape[1], input.path + " (" + dtype_name(info.dtype) + ")"};
  }
  if (shape.batch < 1 || shape.tokens < 1) throw UserError("run.input: the input holds no tokens");
  if (shape.batch > model.max_batch_size) {
    throw UserError("run.input: batch " + std::to_string(shape.batch) + " is over model.max_batch_size " +
                    std::to_string(model.max_batch_size));
  }
  if (shape.tokens > model.max_seq_len) {
    throw UserError("run.input: " + std::to_string(shape.tokens) + " tokens do not fit model.max_seq_len " +
                    std::to_string(model.max_seq_len));
  }
  return shape;
}

InputTensor load_input(const InputConfig& input, const ModelArgs& model, bool check_finite) {
  const InputShape shape = input_shape(input, model);
  InputTensor x;
  x.batch = shape.batch;
  x.tokens = shape.tokens;
  x.dim = model.dim;
  x.description = shape.description;
  if (input.random) {
    x.values.resize(static_cast<size_t>(x.batch * x.tokens * x.dim));
    const uint64_t key = random_stream_key(input.seed, "x");
    for (size_t i = 0; i < x.values.size(); ++i) x.values[i] = random_uniform(key, i);
  } else {
    x.values = SafetensorsFile::open(input.path).read_f32("x");
    if (check_finite) require_finite(x.values, input.path + ": tensor 'x'");
  }
  return x;
}

// A step at start_pos p with S tokens reads rows p..p+S-1 of the mask and only its columns below
// e = p + S: a finite entry at a later column would be silently ignored, so it is refused, and
// so is a row that hides every position it can see (its softmax would divide by zero).
void validate_mask(const std::vector<float>& mask, int64_t tokens, const std::vector<int64_t>& steps) {
  int64_t start_pos = 0;
  for (size_t step = 0; step < steps.size(); ++step) {
    const int64_t kv_len = start_pos + steps[step];
    for (int64_t row = start_pos; row < kv_len; ++row) {
      const float* entries = mask.data() + row * tokens;
      if (std::none_of(entries, entries + kv_len, [](float v) { return std::isfinite(v); })) {
        throw UserError("run.mask: row " + std::to_string(row) + " masks every one of the " + std::to_string(kv_len) +
                        " positions visible at step " + std::to_string(step));
      }
      const float* unseen = std::find_if(entries + kv_len, entries + tokens, [](float v) { return std::isfinite(v); });
      if (unseen != entries + tokens) {
        throw UserError("run.mask: row " + std::to_string(row) + ", column " + std::to_string(unseen - entries) +
                        " is finite, but step " + std::to_string(step) +
                        " (the step of that row) sees only positions < " + std::to_string(kv_len) +
                        ": make it -inf, or change run.schedule");
      }
    }
    start_pos = kv_len;
  }
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

std::vector<NamedPath> files_read(const Config& config, int world, const std::string& config_name) {
  std::vector<NamedPath> files = {
      {config_name, config.source}, {"run.input", config.run.input.path}, {"run.mask", config.run.mask}};
  if (config.weights.format == WeightsFormat::Random) return files;
  for (int rank = 0; rank < world; ++rank) {
    const CheckpointFiles checkpoint = checkpoint_files(config.weights, rank, world);
    if (!checkpoint.index.empty()) files.push_back({"weights.path", checkpoint.index.string()});
    for (const auto& path : checkpoint.paths) files.push_back({"weights.path", path.string()});
    if (!checkpoint.presplit) break;  // every rank reads the same files
  }
  return files;
}

namespace {

// debug.fail: this rank fails on purpose at this step, before its all-reduce. Returns whether it
// wrote NaN into the partial output (the others do not return).
bool inject_fault(const FaultPlan& fault, StepExecutor& executor, size_t step_index) {
  const Communicator& comm = executor.communicator();
  if (fault.mode == FaultMode::None || fault.rank != comm.rank() || fault.step != static_cast<int64_t>(step_index)) {
    return false;
  }
  const std::string who = "rank " + std::to_string(comm.rank()) + " (" + comm.host() + ")";
  std::fprintf(stderr, "mla_run: debug.fail: %s %s at step %zu\n", who.c_str(),
               fault.mode == FaultMode::Exit   ? "exits"
               : fault.mode == FaultMode::Hang ? "hangs"
                                               : "writes NaN",
               step_index);
  std::fflush(stderr);
  if (fault.mode == FaultMode::Exit) std::_Exit(kRankFailureExitCode);
  if (fault.mode == FaultMode::Hang) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  executor.poison_partial();
  return true;
}

}  // namespace

double reduce_step(StepExecutor& executor, const RunOptions& options, size_t step_index) {
  const Communicator& comm = executor.communicator();
  const bool poisoned = inject_fault(options.fault, executor, step_index);
  float bad_value = 0.0f;
  const int64_t bad_index = options.check_finite ? executor.first_non_finite(bad_value) : -1;
  if (bad_index >= 0) {
    const std::string where = poisoned ? "debug.fail wrote it" : executor.explain_non_finite();
    std::fprintf(stderr,
                 "mla_run: error: rank %d (%s): step %zu: partial output y is not finite at element %ld (%g)%s%s\n",
                 comm.rank(), comm.host().c_str(), step_index, static_cast<long>(bad_index), bad_value,
                 where.empty() ? "" : "; ", where.c_str());
  }
  const auto reduce_started = std::chrono::steady_clock::now();
  const float bad_ranks = executor.reduce(bad_index >= 0 ? 1.0f : 0.0f);
  const double reduce_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - reduce_started).count();
  if (bad_ranks != 0.0f) {
    throw RankFailure("step " + std::to_string(step_index) + ": " + std::to_string(static_cast<int>(bad_ranks)) +
                      " rank(s) produced a non-finite partial output (run.check_finite); y is not written");
  }
  return reduce_ms;
}

StepReport CpuStepExecutor::forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                                    int64_t mask_stride, const uint16_t* x_bf16) {
  const int64_t count = batch * seq * layer_.model().dim;
  partial_.resize(static_cast<size_t>(count + 1));
  return layer_.forward(x, batch, seq, start_pos, mask, mask_stride, partial_.data(), x_bf16);
}

StepReport CpuStepExecutor::forward_ragged(const float* x, const RaggedStep& step) {
  partial_.resize(static_cast<size_t>(step.total_tokens() * layer_.model().dim + 1));
  return layer_.forward(x, step, partial_.data());
}

int64_t CpuStepExecutor::first_non_finite(float& value) {
  const int64_t index = mla::first_non_finite(partial_.data(), static_cast<int64_t>(partial_.size()) - 1);
  if (index >= 0) value = partial_[index];
  return index;
}

void CpuStepExecutor::poison_partial() { partial_[0] = std::numeric_limits<float>::quiet_NaN(); }

float CpuStepExecutor::reduce(float flag) {
  partial_.back() = flag;
  comm_.allreduce_sum(partial_.data(), static_cast<int64_t>(partial_.size()));
  return partial_.back();
}

void CpuStepExecutor::copy_output(float* y) { std::memcpy(y, partial_.data(), (partial_.size() - 1) * sizeof(float)); }

RunResult run_schedule(StepExecutor& executor, const InputTensor& x, const std::vector<int64_t>& steps,
                       const std::vector<float>& mask, const RunOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  RunResult result;
  result.y.assign(x.values.size(), 0.0f);
  if (!mask.empty()) validate_mask(mask, x.tokens, steps);
  AlignedVector<float> step_x, step_y;
  int64_t start_pos = 0;
  for (size_t step_index = 0; step_index < steps.size(); ++step_index) {
    const int64_t seq = steps[step_index];
    const int64_t kv_len = start_pos + seq;
    if (options.watchdog != nullptr) options.watchdog->progress("step " + std::to_string(step_index));
    if (static_cast<int64_t>(step_index) == options.hold_step && options.hold) options.hold();
    const int64_t count = x.batch * seq * x.dim;
    step_x.resize(static_cast<size_t>(count));
    step_y.resize(static_cast<size_t>(count));
    for (int64_t b = 0; b < x.batch; ++b) {
      std::memcpy(step_x.data() + b * seq * x.dim, x.values.data() + (b * x.tokens + start_pos) * x.dim,
                  static_cast<size_t>(seq * x.dim) * sizeof(float));
    }
    const float* step_mask = mask.empty() ? nullptr : mask.data() + start_pos * x.tokens;
    StepReport report = executor.forward(step_x.data(), x.batch, seq, start_pos, step_mask, x.tokens, nullptr);
    const double reduce_ms = reduce_step(executor, options, step_index);
    result.allreduce_ms += reduce_ms;
    report.time_ms += reduce_ms;
    executor.copy_output(step_y.data());
    for (int64_t b = 0; b < x.batch; ++b) {
      std::memcpy(result.y.data() + (b * x.tokens + start_pos) * x.dim, step_y.data() + b * seq * x.dim,
                  static_cast<size_t>(seq * x.dim) * sizeof(float));
    }
    if (options.on_step) options.on_step(report);
    result.steps.push_back(report);
    start_pos = kv_len;
  }
  result.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return result;
}

RunResult run_schedule(MlaLayer& layer, Communicator& comm, const InputTensor& x, const std::vector<int64_t>& steps,
                       const std::vector<float>& mask, const RunOptions& options) {
  CpuStepExecutor executor(layer, comm);
  return run_schedule(executor, x, steps, mask, options);
}

}  // namespace mla
