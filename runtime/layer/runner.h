// Runs a schedule of steps through one rank's layer, as serving does: from position 0, the KV
// cache carried from step to step, each step's partial output summed over ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "parallel/communicator.h"
#include "parallel/watchdog.h"
#include "runtime/base/user_files.h"
#include "runtime/io/config.h"
#include "runtime/layer/mla_layer.h"

namespace mla {

struct InputTensor {
  int64_t batch = 0;
  int64_t tokens = 0;
  int64_t dim = 0;
  std::vector<float> values;  // [batch, tokens, dim]
  std::string description;
};

struct InputShape {
  int64_t batch = 0;
  int64_t tokens = 0;
  std::string description;
};

// run.input's batch and tokens, from the config or the file's header alone (nothing allocated),
// checked against the model's capacity. Throws UserError naming run.input or the file.
InputShape input_shape(const InputConfig& input, const ModelArgs& model);

// run.input: the tensor "x" [B, T, dim] (F32 or BF16) of a safetensors file, or seeded random
// values U(-1, 1) that depend only on the seed and the element's index. Throws UserError naming
// run.input or the file when the shape does not fit the model, or (check_finite) naming the first
// non-finite element.
InputTensor load_input(const InputConfig& input, const ModelArgs& model, bool check_finite = true);

// run.mask: the tensor "mask" [T, T] (F32) of a safetensors file, additive; a step at start_pos p
// with S tokens uses rows p..p+S-1 and columns 0..p+S-1. Empty path: no mask (causal).
std::vector<float> load_mask(const std::string& path, int64_t tokens);

// Throws UserError when a mask row hides every position its step sees, or has a finite entry at a
// column its step cannot see (the schedule decides which columns each row reaches).
void validate_mask(const std::vector<float>& mask, int64_t tokens, const std::vector<int64_t>& steps);

// Every file a run of `config` reads at this world size, named by its key, so that no output
// can replace one of them (check_output_paths): the config itself (config.source, named
// config_name), run.input, run.mask and every rank's checkpoint files. Throws UserError as
// checkpoint_files() does.
std::vector<NamedPath> files_read(const Config& config, int world, const std::string& config_name = "the config");

struct RunResult {
  std::vector<float> y;  // [B, T, dim], every step's all-reduced output in order
  std::vector<StepReport> steps;
  double total_ms = 0.0;
  double allreduce_ms = 0.0;
};

struct RunOptions {
  std::function<void(const StepReport&)> on_step;  // sees each step's report (may be empty)
  // Every rank checks its partial output before the all-reduce; a non-finite value stops every
  // rank with a RankFailure naming the step (the rank that made it names itself on stderr).
  bool check_finite = true;
  FaultPlan fault;               // debug.fail
  Watchdog* watchdog = nullptr;  // told of each step's start
  // debug.hold: at the start of step hold_step, hold() is called and never returns (it exchanges
  // collectives with the peers until the job is ended from outside). -1: never.
  int64_t hold_step = -1;
  std::function<void()> hold;
};

// The runner's view of one rank's layer and its communicator. Where a step's partial output lives
// (host memory for the CPU layer, device memory for the CUDA one) is the executor's business.
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  virtual const Communicator& communicator() const = 0;
  // Computes the step's partial output [batch, seq, dim] and keeps it for reduce(). x and mask
  // are host memory: x [batch, seq, dim]; mask the whole run's [T, T] mask from row start_pos
  // (row stride mask_stride), or nullptr. x_bf16: null, or in bf16 compute the same tokens as bf16
  // numbers, which a layer that reads them on the host takes instead of rounding x (the CUDA layer
  // rounds on the device, from x).
  virtual StepReport forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                             int64_t mask_stride, const uint16_t* x_bf16) = 0;
  // A ragged step (continuous batching): x the packed tokens [step.total_tokens(), dim], host
  // memory.
  virtual StepReport forward_ragged(const float* x, const RaggedStep& step) = 0;
  // A finished sequence's slot and cache pages are free again.
  virtual void release_sequence(int64_t /*slot*/) {}
  // to_slot, holding nothing, gets a copy of from_slot's cached rows (LatentCache::fork).
  virtual void fork_sequence(int64_t from_slot, int64_t to_slot) = 0;
  // The latent cache: its pool, and the bytes of the pages held now (0 where not tracked).
  virtual int64_t cache_pool_bytes() const { return 0; }
  virtual int64_t cache_bytes_in_use() const { return 0; }
  // The index of the partial output's first non-finite element (its value in `value`), or -1.
  virtual int64_t first_non_finite(float& value) = 0;
  // After a non-finite partial output: where in the step it began (MlaLayer::explain_non_finite),
  // or empty where the executor cannot tell.
  virtual std::string explain_non_finite() const { return ""; }
  virtual void poison_partial() = 0;  // debug.fail mode nan: a NaN in the partial output
  // Sums the partial outputs over ranks in place, and `flag` with them; returns the summed flag.
  virtual float reduce(float flag) = 0;
  virtual void copy_output(float* y) = 0;  // the reduced [batch, seq, dim], to host memory
  // Benchmarks: while on, the caller hands forward the same x again, unchanged, and an executor
  // that copies x to a device copies it once (at the first forward after turning it on), as a
  // model's previous layer leaves its output where the next layer reads it. Host layers: nothing.
  virtual void keep_input_resident(bool /*on*/) {}
};

// The CPU layer: everything in host memory, the communicator summing host buffers.
class CpuStepExecutor final : public StepExecutor {
 public:
  CpuStepExecutor(MlaLayer& layer, Communicator& comm) : layer_(layer), comm_(comm) {}
  const Communicator& communicator() const override { return comm_; }
  StepReport forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                     int64_t mask_stride, const uint16_t* x_bf16) override;
  StepReport forward_ragged(const float* x, const RaggedStep& step) override;
  void release_sequence(int64_t slot) override { layer_.release_sequence(slot); }
  void fork_sequence(int64_t from_slot, int64_t to_slot) override { layer_.fork_sequence(from_slot, to_slot); }
  int64_t cache_pool_bytes() const override { return layer_.cache().pool_bytes(); }
  int64_t cache_bytes_in_use() const override { return layer_.cache().bytes_in_use(); }
  int64_t first_non_finite(float& value) override;
  std::string explain_non_finite() const override { return layer_.explain_non_finite(); }
  void poison_partial() override;
  float reduce(float flag) override;
  void copy_output(float* y) override;

 private:
  MlaLayer& layer_;
  Communicator& comm_;
  // The partial output and one more element after it: the flag, summed by the same all-reduce,
  // so that every rank learns it without another collective.
  AlignedVector<float> partial_;
};

// After a step's forward: debug.fail's fault at this step, the finite check, and the sum over
// ranks (with every rank's finite flag). Throws RankFailure when a rank's partial output is not
// finite; returns the sum's time in ms.
double reduce_step(StepExecutor& executor, const RunOptions& options, size_t step_index);

// steps: new tokens per step, adding up to x.tokens.
RunResult run_schedule(StepExecutor& executor, const InputTensor& x, const std::vector<int64_t>& steps,
                       const std::vector<float>& mask, const RunOptions& options = {});
RunResult run_schedule(MlaLayer& layer, Communicator& comm, const InputTensor& x, const std::vector<int64_t>& steps,
                       const std::vector<float>& mask, const RunOptions& options = {});

}  // namespace mla
