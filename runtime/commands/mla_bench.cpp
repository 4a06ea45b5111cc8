// mla_bench SWEEP.yaml [--set key=value ...] [--append] [--list-worlds]
//
// Runs the points of a benchmark sweep (runtime/io/sweep.h) whose world is this job's size: for each,
// the step is set up as serving would reach it (the cache filled for decode and chunks), warmed
// up, then timed step by step until the budget is met; the PyTorch baseline times the same shapes
// in the same run. One CSV row and one JSONL row per point, the files rewritten atomically after
// every point, so an interrupted sweep leaves every finished point and nothing half-written.
// launch/mla_bench.sh runs the points of other world sizes under mpirun -np W.
// Exit codes: 0 done, 2 bad input (sweep file, --set, outputs), 1 anything else.
#include <omp.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/packed_linear.h"
#include "kernels/cpu/vector_ops.h"
#include "parallel/mpi_session.h"
#include "parallel/rank_agreement.h"
#include "parallel/sharding.h"
#include "parallel/thread_placement.h"
#include "parallel/watchdog.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/base/user_files.h"
#include "runtime/bench/bench_baseline.h"
#include "runtime/bench/harness.h"
#include "runtime/bench/machine_info.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/sweep.h"
#include "runtime/io/weights.h"
#include "runtime/layer/backend.h"
#include "runtime/layer/latent_cache.h"
#include "runtime/layer/memory_plan.h"
#include "runtime/layer/mla_layer.h"
#include "runtime/layer/op_count.h"
#include "runtime/layer/runner.h"

#if MLA_HAVE_CUDA
#include <nccl.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_memory.h"
#include "parallel/gpu_communicator.h"
#include "runtime/layer/cuda_step_executor.h"
#include "runtime/layer/mla_layer_cuda.h"
#endif

namespace mla {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The public columns (docs/performance.md; keep names and order), then ours.
const std::vector<std::string> kColumns = {
    "backend", "world", "threads", "batch", "seq_len", "phase", "attention", "formulation", "compute_dtype",
    "weights_dtype", "path_chosen", "formulation_chosen", "median_ms", "min_ms", "p90_ms", "allreduce_ms", "gflops",
    "gbps", "workspace_bytes", "peak_rss_bytes",
    // ours, after the public ones
    "chunk", "kv_len", "start_pos", "step_tokens", "n_local_heads", "reps", "flop", "bytes", "linear_flop",
    "replicated_flop", "gemm_only_ms", "device_peak_bytes", "torch_median_ms", "torch_min_ms", "torch_p90_ms",
    "torch_formulation", "speedup_vs_torch", "torch_rel_l2", "sweep", "weight_bytes", "weight_gbps", "linear_ms",
    "attention_ms", "device_used_bytes", "kv_distribution", "mean_kv_len", "step_total_tokens", "kv_cache",
    "context_parallel", "kv_pool_bytes", "attention_bytes", "attention_gbps", "step_byte_floor", "context_bytes",
    "torch_peak_bytes", "torch_compile_median_ms", "speedup_vs_torch_compile", "torch_compile_rel_l2",
    "torch_graph_median_ms", "speedup_vs_torch_graph", "torch_graph_rel_l2", "device_process_bytes",
    "torch_device_process_bytes", "cuda_graph_replays", "copy_gbps", "attention_flop", "attention_tflops"};

// VmHWM (peak resident set) of this process, and its reset (Linux >= 4.0: writing 5 to clear_refs
// restarts the high-water mark from the current RSS), so that each point reports its own peak.
int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// The kv length a sequence of the timed step attends to, averaged over its sequences.
double mean_kv_len(const BenchPoint& point, uint64_t seed) {
  double sum = 0.0;
  const std::vector<BenchPoint::Sequence> sequences = point.sequences(seed);
  for (const BenchPoint::Sequence& sequence : sequences) {
    sum += static_cast<double>(sequence.start_pos + sequence.new_tokens);
  }
  return sum / static_cast<double>(sequences.size());
}

// The timed step's new tokens, over all its sequences.
int64_t step_total_tokens(const BenchPoint& point, uint64_t seed) {
  int64_t tokens = 0;
  for (const BenchPoint::Sequence& sequence : point.sequences(seed)) tokens += sequence.new_tokens;
  return tokens;
}

// run.kv_cache as one CSV cell: "dense auto", "paged 64 fp8".
std::string kv_cache_text(const KvCacheConfig& cache) {
  return cache.layout == KvCacheLayout::Dense
             ? std::string("dense ") + to_string(cache.dtype)
             : "paged " + std::to_string(cache.page_size) + " " + to_string(cache.dtype);
}

// Ranks that wait for rank 0 (running the baseline, timing GEMMs alone) must not spin on a core
// it is measuring with: a non-blocking barrier polled with sleeps instead of a spinning MPI_Barrier.
void quiet_barrier(const MpiSession& session) {
  if (session.world() == 1) return;
  CollectiveScope scope(session.watchdog(), "waiting for rank 0 (baseline, GEMM timing)");
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &request));
  for (int done = 0;;) {
    MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    const timespec pause{0, 1000000};
    nanosleep(&pause, nullptr);
  }
}

// One point's measurements on this rank (rank 0's are reported).
struct Measurement {
  std::vector<double> step_ms, allreduce_ms;
  std::vector<double> linear_ms, attention_ms;  // CPU: the step's parts (StepReport)
  StepReport report;
  std::vector<float> partial_first_sequence;  // the last step's partial output of sequence 0
  int64_t device_bytes = 0;                   // CUDA: the most held through our allocations (measured)
  int64_t device_used_bytes = 0;              // CUDA: what the driver says the device uses, all processes
  int64_t device_process_bytes = -1;          // CUDA: what the driver accounts to this process; -1 unknown
  int64_t graph_replays = 0;                  // timed steps that were one launch of a captured decode graph (CUDA)
  int64_t weight_bytes = 0;                   // CPU: the weight bytes a step reads (streamed bits or GEMM operands)
  std::string linear_implementation;          // CPU: which GEMM runs the linear layers
  int64_t kv_pool_bytes = 0;                  // the latent cache's pool on this rank
  // The attention's compulsory bytes (the latent rows each sequence sees, in their stored dtype,
  // read once, and the absorbed queries and latent outputs in fp32), and the step's: those, the
  // weights as stored, the input and the partial output.
  int64_t attention_bytes = 0;
  int64_t step_byte_floor = 0;
};

// Weights are loaded once per (weights, model, world, compute dtype): loading DeepSeek-sized
// random fp8 weights takes longer than timing a point.
class WeightsCache {
 public:
  const LoadedWeights& get(const Config& config, const HeadShard& shard, int world) {
    std::string key = to_string(config.run.compute_dtype) + std::string("|") + std::to_string(world);
    for (const auto& [name, value] : config_entries(config)) {
      if (name.rfind("model.", 0) == 0 && name != "model.max_batch_size") key += "|" + name + "=" + value;
      if (name.rfind("weights.", 0) == 0) key += "|" + name + "=" + value;
    }
    if (key != key_) {
      loaded_.reset();  // the old slice goes before the new one is made
      loaded_ =
          load_layer_weights(config.weights, config.model, shard, config.run.compute_dtype, config.run.check_finite);
      key_ = key;
      ++generation_;
    }
    return *loaded_;
  }
  int generation() const { return generation_; }

 private:
  std::string key_;
  std::optional<LoadedWeights> loaded_;
  int generation_ = 0;
};

// What to do with the rows already in bench.csv and bench.jsonl.
enum class ExistingRows {
  Refuse,     // replace them when they are all of this run's world, else refuse (the default)
  Append,     // --append: keep them, add this run's
  Overwrite,  // --overwrite: replace the files whatever they hold
};

// The layer of one point on its backend, with the communicator and the executor that drive it.
struct PointLayer {
  std::unique_ptr<MlaLayer> cpu_layer;
#if MLA_HAVE_CUDA
  std::unique_ptr<CudaMlaLayer> cuda_layer;
  GpuCommunicator gpu_comm;   // parallel.communicator: NCCL, or MPI through host memory
  GpuCommunicator gpu_group;  // parallel.context_parallel > 1: this rank's group, the same way
#endif
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<Communicator> context_group;  // parallel.context_parallel > 1: this rank's group
  std::unique_ptr<StepExecutor> executor;
};

// After the timed steps: the device memory at its peak and as the driver sees it (CUDA); the
// weight bytes a step reads (the CPU's streamed or prepared operands, the GPU's weights as held);
// the rank's cache pool; the attention's and the step's compulsory bytes. kv_lens: each
// sequence's positions after the step.
void record_bytes(const PointLayer& rig, const ModelArgs& model, const std::vector<int64_t>& kv_lens, int64_t tokens,
                  Measurement& result) {
  const LatentCacheShape* cache = nullptr;
  int64_t heads = 0;
#if MLA_HAVE_CUDA
  if (rig.cuda_layer) {
    result.device_bytes = device_memory_use().peak_bytes;
    result.device_used_bytes = device_memory_used_by_driver();
    result.device_process_bytes = device_memory_used_by_this_process();
    result.weight_bytes = rig.cuda_layer->weight_bytes_read(tokens);
    cache = &rig.cuda_layer->cache().shape();
    heads = rig.cuda_layer->shard().n_local_heads;
  }
#endif
  if (rig.cpu_layer) {
    result.weight_bytes = rig.cpu_layer->weight_bytes_read(tokens, result.report.plan.formulation);
    cache = &rig.cpu_layer->cache().shape();
    heads = rig.cpu_layer->shard().n_local_heads;
  }
  result.kv_pool_bytes = rig.executor->cache_pool_bytes();
  if (cache == nullptr) return;
  const int64_t row_bytes = latent_row_bytes(cache->dtype, cache->latent_dim, cache->rope_dim);
  int64_t rows = 0;
  for (const int64_t kv_len : kv_lens) rows += cache->rows_for(kv_len);
  const int64_t q_and_out = tokens * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim) * 4;
  result.attention_bytes = rows * row_bytes + q_and_out;
  result.step_byte_floor = result.weight_bytes + result.attention_bytes + 2 * tokens * model.dim * 4;
}

// What a point needs before it is timed, the same on every rank.
struct PointSetup {
  Config config;
  HeadShard shard;
  const LoadedWeights* loaded = nullptr;
  InputTensor x;
  int threads = 0;
};

// One variant of the PyTorch baseline at a point.
struct BaselineRun {
  Json answer;          // the worker's answer; null when this variant did not run here
  double rel_l2 = NAN;  // ours against the baseline's, sequence 0
  bool ok() const { return answer.is_object() && answer.value("ok", false); }
};

// A timed point, with what rank 0 measured around it.
struct PointResult {
  BenchPoint point;
  const PointSetup* setup = nullptr;
  Measurement measured;
  int64_t peak_rss_bytes = 0;
  StepCost cost;
  double gemm_only_ms = NAN;  // rank 0: the step's GEMMs alone (CPU: the layer's linear code; GPU: cuBLAS)
  std::map<TorchVariant, BaselineRun> torch;  // rank 0: the variants of bench.torch_variants
};

const BaselineRun& baseline_run(const PointResult& result, TorchVariant variant) {
  static const BaselineRun not_listed;
  const auto found = result.torch.find(variant);
  return found == result.torch.end() ? not_listed : found->second;
}

class Bench {
 public:
  Bench(const MpiSession& session, Sweep sweep, ExistingRows existing)
      : session_(session),
        sweep_(std::move(sweep)),
        existing_(existing),
        phases_(session),
        csv_(ResultFile::csv(sweep_.bench.csv, kColumns)),
        jsonl_(ResultFile::jsonl(sweep_.bench.jsonl)) {}
  ~Bench();
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  int run();

 private:
  // The points of this job's world; the others are named on stderr (launch/mla_bench.sh runs them).
  std::vector<BenchPoint> points_of_this_world() const;
  // Collective: checks the output paths, reads back or refuses the rows already there (rank 0),
  // describes the machine and starts the baseline.
  void prepare_outputs();
  // Rank 0: the rest of the machine's description, and the sweep's first line.
  void describe_job(size_t point_count);
  // Collective: the point's config, threads, shard, weights and input.
  PointSetup set_up(const BenchPoint& point);
  StepCost cost_of(const BenchPoint& point, const PointSetup& setup, const Measurement& measured) const;
  StepCost ragged_cost(const BenchPoint& point, const PointSetup& setup, const Measurement& measured) const;
  ResultRow csv_row(const PointResult& result) const;
  Json jsonl_record(const PointResult& result, const ResultRow& row) const;
  void print_point(const PointResult& result) const;
  void start_baseline();
  PointLayer make_layer(const Config& config, const BenchPoint& point, const HeadShard& shard,
                        const LayerWeights& weights, Measurement& result) const;
  // Warm-up, then timed repetitions of `step` until the budget is met.
  void time_steps(StepExecutor& executor, const std::function<StepReport()>& step, Measurement& result) const;
  Measurement measure(const Config& config, const BenchPoint& point, const HeadShard& shard,
                      const LayerWeights& weights, const InputTensor& x);
  Measurement measure_ragged(const Config& config, const BenchPoint& point, const HeadShard& shard,
                             const LayerWeights& weights, const InputTensor& x);
  double time_gemms_alone(const StepCost& cost, int threads, ComputeDType compute_dtype);
  BaselineRun run_baseline(const Config& config, const BenchPoint& point, const HeadShard& shard,
                           const LayerWeights& weights, const InputTensor& x, const Measurement& measured, int threads,
                           TorchVariant variant);
  std::string baseline_weights_file(const ModelArgs& model, const HeadShard& shard, const LayerWeights& weights);

  const MpiSession& session_;
  Sweep sweep_;
  ExistingRows existing_;
  Phases phases_;
  WeightsCache weights_;
  std::unique_ptr<TorchBaseline> baseline_;
  std::string baseline_note_;
  std::string scratch_dir_;
  int baseline_weights_generation_ = -1;
  std::string baseline_weights_path_;
  // Answers by request: points that differ only in our own choices (attention: fast, standard,
  // auto) give the baseline the same request, which is timed once and its output kept.
  struct KeptAnswer {
    Json answer;
    std::vector<float> output;
    std::string point;
  };
  std::map<std::string, KeptAnswer> baseline_answers_;
  MachineEntries machine_;
  ResultFile csv_, jsonl_;  // rank 0's
};

void Bench::start_baseline() {
  if (sweep_.bench.baseline == BaselineChoice::None) {
    baseline_note_ = "not run (bench.baseline: none)";
    return;
  }
  const std::string script = std::string(MLA_SOURCE_DIR) + "/launch/torch_mla_baseline.py";
  try {
    baseline_ = std::make_unique<TorchBaseline>(sweep_.bench.python, script, 120.0);
    baseline_note_ = "PyTorch " + baseline_->greeting().value("torch_version", std::string("?")) + " eager (" +
                     sweep_.bench.python + " launch/torch_mla_baseline.py)";
  } catch (const UserError& error) {
    if (sweep_.bench.baseline == BaselineChoice::Torch) throw;
    baseline_note_ = std::string("not run: ") + error.what();
  }
}

PointLayer Bench::make_layer(const Config& config, const BenchPoint& point, const HeadShard& shard,
                             const LayerWeights& weights, Measurement& result) const {
  PointLayer rig;
  if (point.backend == Backend::Cuda) {
#if MLA_HAVE_CUDA
    const int device = session_.local_rank() % cuda_device_count();
    CUDA_CHECK(cudaSetDevice(device));
    CudaLayerLimits limits;
    limits.max_batch = point.batch;
    limits.max_step_len = std::max(point.start_pos(), point.step_len());
    limits.max_kv_len = point.seq_len;
    if (fills_by_fork(point, sweep_.bench.fill)) {  // the fill is one sequence's step
      limits.max_step_tokens = std::max(point.start_pos(), point.batch * point.step_len());
    }
    if (point.ragged()) {  // the untimed steps that fill the caches take a sequence each
      limits.max_step_len = point.seq_len;
      int64_t timed_tokens = 0;
      for (const BenchPoint::Sequence& sequence : point.sequences(sweep_.bench.seed)) {
        timed_tokens += sequence.new_tokens;
      }
      limits.max_step_tokens = std::max(point.seq_len, timed_tokens);
    }
    reset_device_memory_peak();  // the point's peak, measured (Measurement::device_bytes)
    rig.cuda_layer =
        std::make_unique<CudaMlaLayer>(config.model, shard, weights, config.run, limits, point.context_parallel);
    rig.cuda_layer->set_attention_timing(true);
    rig.gpu_comm = make_gpu_communicator(config.parallel.communicator, session_, rig.cuda_layer->stream(),
                                         config.parallel.timeout_s);
    rig.gpu_group =
        make_gpu_context_group(config.parallel.communicator, session_, static_cast<int>(point.context_parallel),
                               rig.cuda_layer->stream(), config.parallel.timeout_s);
    rig.cuda_layer->set_context_group(rig.gpu_group.sum.get());
    rig.executor =
        std::make_unique<CudaStepExecutor>(*rig.cuda_layer, *rig.gpu_comm.sum, std::vector<float>{}, point.seq_len);
#endif
    return rig;
  }
  if (point.context_parallel > 1) {
    rig.context_group = std::make_unique<MpiCommunicator>(session_, static_cast<int>(point.context_parallel));
  }
  rig.cpu_layer = std::make_unique<MlaLayer>(config.model, shard, weights, config.run, rig.context_group.get());
  result.linear_implementation = rig.cpu_layer->linear_implementation();
  rig.comm = std::make_unique<MpiCommunicator>(session_);
  rig.executor = std::make_unique<CpuStepExecutor>(*rig.cpu_layer, *rig.comm);
  return rig;
}

// Warm-up, then timed steps until the budget is met. Rank 0 decides when and tells the others
// through the step's own all-reduce (its flag is the only non-zero one), so no extra collective
// sits inside the timed loop.
void Bench::time_steps(StepExecutor& executor, const std::function<StepReport()>& step, Measurement& result) const {
  const BenchSettings& bench = sweep_.bench;
  const RepBudget budget{bench.warmup, bench.min_reps, bench.max_reps, bench.max_seconds};
  Watchdog& watchdog = *session_.watchdog();
  // On a GPU the step's input is copied once, by the first warm-up, and stays on the device as the
  // baseline's does; every step here passes the same x.
  executor.keep_input_resident(true);
  for (int64_t i = 0; i < budget.warmup; ++i) {
    watchdog.progress("warm-up");
    step();
    executor.reduce(0.0f);
  }
  double timed_ms = 0.0;
  for (bool more = true; more;) {
    watchdog.progress("timed steps");
    const auto started = Clock::now();
    result.report = step();
    const auto computed = Clock::now();
    result.linear_ms.push_back(result.report.linear_ms);
    result.attention_ms.push_back(result.report.attention_ms);
    result.graph_replays += result.report.graph_replayed ? 1 : 0;
    float continue_flag = 0.0f;
    if (session_.rank() == 0) {
      const int64_t reps = static_cast<int64_t>(result.step_ms.size()) + 1;
      continue_flag = budget.wants_more(reps, (timed_ms + ms_since(started)) / 1e3) ? 1.0f : 0.0f;
    }
    more = executor.reduce(continue_flag) != 0.0f;
    const double step_ms = ms_since(started);
    result.step_ms.push_back(step_ms);
    result.allreduce_ms.push_back(ms_since(computed));
    timed_ms += step_ms;
  }
  executor.keep_input_resident(false);
}

// ragged_decode and mixed: each sequence's cache filled to its start position by an untimed step
// of its own (so that no buffer is sized for all of them at once), then the ragged step timed (it
// rewrites the same positions each time).
Measurement Bench::measure_ragged(const Config& config, const BenchPoint& point, const HeadShard& shard,
                                  const LayerWeights& weights, const InputTensor& x) {
  const int64_t dim = config.model.dim;
  Measurement result;
  PointLayer rig = make_layer(config, point, shard, weights, result);
  StepExecutor& executor = *rig.executor;
  RaggedStep timed;
  AlignedVector<float> step_x;
  const std::vector<BenchPoint::Sequence> sequences = point.sequences(sweep_.bench.seed);
  for (size_t b = 0; b < sequences.size(); ++b) {
    const BenchPoint::Sequence& sequence = sequences[b];
    const int64_t slot = static_cast<int64_t>(b);
    const float* tokens = x.values.data() + slot * x.tokens * dim;
    if (sequence.start_pos > 0) {
      session_.watchdog()->progress("filling the cache");
      RaggedStep fill;
      fill.sequences.push_back({slot, 0, sequence.start_pos});
      executor.forward_ragged(tokens, fill);
    }
    timed.sequences.push_back({slot, sequence.start_pos, sequence.new_tokens});
    step_x.insert(step_x.end(), tokens + sequence.start_pos * dim,
                  tokens + (sequence.start_pos + sequence.new_tokens) * dim);
  }
  time_steps(
      executor, [&] { return executor.forward_ragged(step_x.data(), timed); }, result);
  std::vector<int64_t> kv_lens;
  for (const BenchPoint::Sequence& sequence : sequences) kv_lens.push_back(sequence.start_pos + sequence.new_tokens);
  record_bytes(rig, config.model, kv_lens, timed.total_tokens(), result);
  return result;
}

Measurement Bench::measure(const Config& config, const BenchPoint& point, const HeadShard& shard,
                           const LayerWeights& weights, const InputTensor& x) {
  const int64_t dim = config.model.dim;
  const int64_t start_pos = point.start_pos();
  const int64_t step_len = point.step_len();
  Measurement result;
  PointLayer rig = make_layer(config, point, shard, weights, result);
  StepExecutor& executor = *rig.executor;

  // The cache as serving reaches this step: positions before start_pos, filled untimed. x holds
  // one sequence where the fill forks (every sequence then takes sequence 0's tokens).
  const auto slice = [&](int64_t from, int64_t count) {
    AlignedVector<float> part(static_cast<size_t>(point.batch * count * dim));
    for (int64_t b = 0; b < point.batch; ++b) {
      std::copy_n(x.values.data() + ((b % x.batch) * x.tokens + from) * dim, count * dim,
                  part.data() + b * count * dim);
    }
    return part;
  };
  if (start_pos > 0 && fills_by_fork(point, sweep_.bench.fill)) {
    session_.watchdog()->progress("filling the cache (sequence 0, then forked)");
    RaggedStep first;
    first.sequences.push_back({0, 0, start_pos});
    executor.forward_ragged(x.values.data(), first);
    for (int64_t b = 1; b < point.batch; ++b) executor.fork_sequence(0, b);
  } else if (start_pos > 0) {
    session_.watchdog()->progress("filling the cache");
    const AlignedVector<float> fill = slice(0, start_pos);
    executor.forward(fill.data(), point.batch, start_pos, 0, nullptr, 0, nullptr);
  }
  const AlignedVector<float> step_x = slice(start_pos, step_len);
  // In bf16 compute the step's input arrives as bf16 numbers, as a bf16 model's previous layer
  // hands it over and as the PyTorch baseline gets it (its tensors are converted before timing).
  AlignedVector<uint16_t> step_x_bf16;
  if (point.backend == Backend::Cpu && config.run.compute_dtype == ComputeDType::BF16) {
    step_x_bf16.resize(step_x.size());
    f32_to_bf16_bits_rne(step_x.data(), step_x_bf16.data(), static_cast<int64_t>(step_x.size()));
  }
  const uint16_t* step_input_bf16 = step_x_bf16.empty() ? nullptr : step_x_bf16.data();
  time_steps(
      executor,
      [&] { return executor.forward(step_x.data(), point.batch, step_len, start_pos, nullptr, 0, step_input_bf16); },
      result);
  record_bytes(rig, config.model, std::vector<int64_t>(static_cast<size_t>(point.batch), start_pos + step_len),
               point.batch * step_len, result);
  // Once more, untimed, to keep the partial output of sequence 0 (compared with the baseline's).
  executor.forward(step_x.data(), point.batch, step_len, start_pos, nullptr, 0, step_input_bf16);
  std::vector<float> partial(static_cast<size_t>(point.batch * step_len * dim));
  executor.copy_output(partial.data());
  partial.resize(static_cast<size_t>(step_len * dim));
  result.partial_first_sequence = std::move(partial);
  executor.reduce(0.0f);
  return result;
}

// The step's GEMMs alone (projections and the formulation's fold or expansion), on the same
// shapes, threads and GEMM implementation as the layer: the projections through a PackedLinear
// prepared the same way, the per-head fold and unfold through gemm(). The floor the step's linear
// layers could reach.
double Bench::time_gemms_alone(const StepCost& cost, int threads, ComputeDType compute_dtype) {
  set_blas_threads(threads);
  const LinearPrecision precision = compute_dtype == ComputeDType::BF16 ? LinearPrecision::BF16 : LinearPrecision::FP32;
  double total_ms = 0.0;
  for (const GemmShape& shape : cost.gemms) {
    // Random operands, rounded to bf16 values (as the bf16 operands must be), so that the floor
    // is timed on data like the layer's: tile products run faster on constant operands
    // (docs/performance.md).
    AlignedVector<float> a(static_cast<size_t>(shape.m * shape.k)), b(static_cast<size_t>(shape.k * shape.n)),
        c(static_cast<size_t>(shape.m * shape.n));
    const uint64_t a_key = random_stream_key(11, "gemm_only_a"), b_key = random_stream_key(11, "gemm_only_b");
    for (size_t i = 0; i < a.size(); ++i) a[i] = round_to_bf16(random_uniform(a_key, i));
    for (size_t i = 0; i < b.size(); ++i) b[i] = round_to_bf16(random_uniform(b_key, i));
    std::function<void()> run_once;
    PackedLinear weight;
    GemmParams g;
    if (shape.prepared_weight) {
      weight = PackedLinear(b.data(), shape.n, shape.k, precision);
      run_once = [&] {
        PackedLinearCall call;
        call.x = a.data();
        call.x_stride = shape.k;
        call.y = c.data();
        call.y_stride = shape.n;
        call.rows = shape.m;
        call.round_to_bf16 = precision == LinearPrecision::BF16;
        weight.forward(call);
      };
    } else {
      g.transpose_b = true;  // as the layer's unfold calls it; the fold's transpose costs the same
      g.m = shape.m;
      g.n = shape.n;
      g.k = shape.k;
      g.a = a.data();
      g.lda = shape.k;
      g.b = b.data();
      g.ldb = shape.k;
      g.c = c.data();
      g.ldc = shape.n;
      run_once = [&] { gemm(g); };
    }
    double best = INFINITY;
    for (int rep = 0; rep < 3; ++rep) {
      const auto started = Clock::now();
      for (int64_t i = 0; i < shape.batch; ++i) run_once();
      best = std::min(best, ms_since(started));
    }
    total_ms += best;
  }
  return total_ms;
}

#if MLA_HAVE_CUDA
// The step's GEMMs alone on the GPU: each shape through cuBLAS as the CUDA layer calls it (bf16
// operands in bf16 compute, fp32 otherwise; y = x W^T, a per-head fold or unfold as one strided
// batch), on random operands rounded to bf16 values, timed by CUDA events, best of 3 after a
// warm-up: the floor the step's linear layers could reach.
double time_gemms_alone_cuda(const StepCost& cost, ComputeDType compute_dtype) {
  cudaStream_t stream = nullptr;
  cudaEvent_t begin = nullptr, end = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreate(&begin));
  CUDA_CHECK(cudaEventCreate(&end));
  struct Release {  // the stream and events go whatever throws
    cudaStream_t stream;
    cudaEvent_t begin, end;
    ~Release() {
      cudaEventDestroy(begin);
      cudaEventDestroy(end);
      cudaStreamDestroy(stream);
    }
  } release{stream, begin, end};
  CublasContext cublas(stream);
  const bool bf16 = compute_dtype == ComputeDType::BF16;
  const auto upload = [&](int64_t count, uint64_t key, DeviceBuffer<float>& f32, DeviceBuffer<uint16_t>& bits) {
    std::vector<float> host(static_cast<size_t>(count));
    for (size_t i = 0; i < host.size(); ++i) host[i] = round_to_bf16(random_uniform(key, i));
    // Each copy is waited for: the host vectors go out of scope here.
    if (!bf16) {
      f32 = DeviceBuffer<float>(count);
      f32.upload(host, stream);
      CUDA_CHECK(cudaStreamSynchronize(stream));
      return static_cast<const void*>(f32.data());
    }
    std::vector<uint16_t> host_bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) host_bits[i] = f32_to_bf16_bits(host[i]);
    bits = DeviceBuffer<uint16_t>(count);
    bits.upload(host_bits, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return static_cast<const void*>(bits.data());
  };
  double total_ms = 0.0;
  for (const GemmShape& shape : cost.gemms) {
    DeviceBuffer<float> a_f32, b_f32;
    DeviceBuffer<uint16_t> a_bits, b_bits;
    const int64_t b_matrices = shape.prepared_weight ? 1 : shape.batch;
    GemmCudaParams g;
    g.transpose_b = true;
    g.m = shape.m;
    g.n = shape.n;
    g.k = shape.k;
    g.a = upload(shape.batch * shape.m * shape.k, random_stream_key(11, "gemm_only_a"), a_f32, a_bits);
    g.lda = shape.k;
    g.stride_a = shape.m * shape.k;
    g.b = upload(b_matrices * shape.n * shape.k, random_stream_key(11, "gemm_only_b"), b_f32, b_bits);
    g.ldb = shape.k;
    g.stride_b = shape.prepared_weight ? 0 : shape.n * shape.k;
    DeviceBuffer<float> c(shape.batch * shape.m * shape.n);
    g.c = c.data();
    g.ldc = shape.n;
    g.stride_c = shape.m * shape.n;
    g.batch = shape.batch;
    g.operands = bf16 ? GemmOperands::BF16 : GemmOperands::F32;
    gemm_cuda(cublas, g);  // warm-up: cuBLAS chooses its kernel on the first call
    float best = INFINITY;
    for (int rep = 0; rep < 3; ++rep) {
      CUDA_CHECK(cudaEventRecord(begin, stream));
      gemm_cuda(cublas, g);
      CUDA_CHECK(cudaEventRecord(end, stream));
      CUDA_CHECK(cudaEventSynchronize(end));
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
      best = std::min(best, ms);
    }
    total_ms += best;
  }
  return total_ms;
}
#endif

// The memory bandwidth a decode step is measured against: a 256 MiB copy by `threads` threads,
// best of 3, counted as STREAM counts it (bytes read + bytes written per second).
double measure_copy_gbps(int threads) {
  const size_t count = size_t{64} << 20;  // floats: 256 MiB per buffer
  std::vector<float> source(count, 1.0f), destination(count, 0.0f);
  double best_ms = INFINITY;
  for (int rep = 0; rep < 3; ++rep) {
    const auto started = Clock::now();
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t block = 0; block < 64; ++block) {
      const size_t begin = static_cast<size_t>(block) * (count / 64);
      std::memcpy(destination.data() + begin, source.data() + begin, (count / 64) * sizeof(float));
    }
    best_ms = std::min(best_ms, ms_since(started));
  }
  return 2.0 * static_cast<double>(count * sizeof(float)) / best_ms / 1e6;
}

// The baseline reads this rank's slice from a file in a scratch directory, written once per
// weights generation (weights_ changes it when a point needs other weights).
std::string Bench::baseline_weights_file(const ModelArgs& m, const HeadShard& shard, const LayerWeights& w) {
  if (baseline_weights_generation_ == weights_.generation()) return baseline_weights_path_;
  const int64_t heads = shard.n_local_heads;
  const int64_t C = m.kv_lora_rank;
  std::vector<OutputTensor> tensors;
  if (m.q_lora_rank == 0) {
    tensors.push_back({"wq", {heads * m.qk_head_dim(), m.dim}, w.wq.data()});
  } else {
    tensors.push_back({"wq_a", {m.q_lora_rank, m.dim}, w.wq_a.data()});
    tensors.push_back({"q_norm", {m.q_lora_rank}, w.q_norm.data()});
    tensors.push_back({"wq_b", {heads * m.qk_head_dim(), m.q_lora_rank}, w.wq_b.data()});
  }
  tensors.push_back({"wkv_a", {C + m.qk_rope_head_dim, m.dim}, w.wkv_a.data()});
  tensors.push_back({"kv_norm", {C}, w.kv_norm.data()});
  tensors.push_back({"wkv_b", {heads * (m.qk_nope_head_dim + m.v_head_dim), C}, w.wkv_b.data()});
  tensors.push_back({"wo", {m.dim, heads * m.v_head_dim}, w.wo.data()});
  baseline_weights_path_ = scratch_dir_ + "/weights.safetensors";
  write_safetensors_f32(baseline_weights_path_, tensors, {});
  baseline_weights_generation_ = weights_.generation();
  return baseline_weights_path_;
}

void write_raw_f32(const std::string& path, const float* values, int64_t count) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(count * sizeof(float)));
  if (!out) throw UserError(path + ": cannot write the baseline's input");
}

// FNV-1a over the bytes of `count` floats: which input a kept baseline answer was timed on.
uint64_t fingerprint(const float* values, int64_t count) {
  uint64_t hash = 1469598103934665603ull;
  const auto* bytes = reinterpret_cast<const unsigned char*>(values);
  for (size_t i = 0; i < static_cast<size_t>(count) * sizeof(float); ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  return hash;
}

// Rank 0's slice through one variant of the PyTorch baseline: same weights (the fp32 compute
// copies, bf16 values in bf16 mode), same first sequence, same step, same threads. Its output for
// sequence 0 is compared with ours. A request already answered at an earlier point is not timed
// again: the answer is kept, with the point that measured it.
BaselineRun Bench::run_baseline(const Config& config, const BenchPoint& point, const HeadShard& shard,
                                const LayerWeights& weights, const InputTensor& x, const Measurement& measured,
                                int threads, TorchVariant variant) {
  BaselineRun run;
  if (!baseline_) return run;
  if (variant == TorchVariant::Graph && point.backend != Backend::Cuda) {
    run.answer = Json{{"ok", false}, {"error", "not run: a CUDA graph needs a cuda point"}};
    return run;
  }
  if (scratch_dir_.empty()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "mla_bench.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw UserError("mla_bench: cannot create a temporary directory in /tmp");
    scratch_dir_ = pattern;
  }
  const ModelArgs& m = config.model;
  const std::string x_path = scratch_dir_ + "/x.bin";
  const std::string y_path = scratch_dir_ + "/y.bin";
  const int64_t x_count = point.seq_len * m.dim;  // sequence 0, positions 0 .. seq_len-1
  Json request = {{"cmd", "run"},
                  {"weights", baseline_weights_file(m, shard, weights)},
                  {"x", x_path},
                  {"y_out", y_path},
                  {"model",
                   {{"dim", m.dim},
                    {"n_local_heads", shard.n_local_heads},
                    {"q_lora_rank", m.q_lora_rank},
                    {"kv_lora_rank", m.kv_lora_rank},
                    {"qk_nope_head_dim", m.qk_nope_head_dim},
                    {"qk_rope_head_dim", m.qk_rope_head_dim},
                    {"v_head_dim", m.v_head_dim},
                    {"max_seq_len", m.max_seq_len},
                    {"original_seq_len", m.original_seq_len},
                    {"rope_theta", m.rope_theta},
                    {"rope_factor", m.rope_factor},
                    {"beta_fast", m.beta_fast},
                    {"beta_slow", m.beta_slow},
                    {"mscale", m.mscale}}},
                  {"batch", point.batch},
                  {"start_pos", point.start_pos()},
                  {"step_len", point.step_len()},
                  {"formulation", to_string(point.formulation)},
                  {"compute_dtype", to_string(point.compute_dtype)},
                  {"threads", threads},
                  {"device", point.backend == Backend::Cuda ? "cuda" : "cpu"},
                  {"warmup", sweep_.bench.warmup},
                  {"min_reps", sweep_.bench.min_reps},
                  {"max_seconds", sweep_.bench.max_seconds},
                  {"max_reps", sweep_.bench.max_reps},
                  {"variant", to_string(variant)}};
  const std::string key = request.dump() + " weights generation " + std::to_string(weights_.generation()) + " x " +
                          std::to_string(fingerprint(x.values.data(), x_count));
  auto kept = baseline_answers_.find(key);
  const bool timed_before = kept != baseline_answers_.end();
  if (!timed_before) {
    write_raw_f32(x_path, x.values.data(), x_count);
    std::filesystem::remove(y_path);
    // Generous: the baseline may be many times slower than we are, and it fills its cache first.
    const double timeout_s = 600.0 + 20.0 * sweep_.bench.max_seconds;
    KeptAnswer fresh{baseline_->request(request, timeout_s), {}, point.label()};
    if (!fresh.answer.is_object()) fresh.answer = Json{{"ok", false}, {"error", "the baseline answered no object"}};
    if (fresh.answer.value("ok", false)) {
      std::ifstream in(y_path, std::ios::binary);
      fresh.output.resize(measured.partial_first_sequence.size());
      const auto bytes = static_cast<std::streamsize>(fresh.output.size() * sizeof(float));
      in.read(reinterpret_cast<char*>(fresh.output.data()), bytes);
      if (in.gcount() != bytes) fresh.output.clear();
    }
    kept = baseline_answers_.emplace(key, std::move(fresh)).first;
  }
  run.answer = kept->second.answer;
  if (timed_before) run.answer["timed_at_point"] = kept->second.point;
  const std::vector<float>& theirs = kept->second.output;
  if (!theirs.empty() && theirs.size() == measured.partial_first_sequence.size()) {
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < theirs.size(); ++i) {
      const double d = static_cast<double>(measured.partial_first_sequence[i]) - theirs[i];
      diff += d * d;
      norm += static_cast<double>(theirs[i]) * theirs[i];
    }
    run.rel_l2 = std::sqrt(diff / std::max(norm, 1e-300));
  }
  return run;
}

Bench::~Bench() {
  if (!scratch_dir_.empty()) {
    std::error_code error;
    std::filesystem::remove_all(scratch_dir_, error);
  }
}

std::vector<BenchPoint> Bench::points_of_this_world() const {
  std::vector<BenchPoint> points;
  std::map<int, int> other_worlds;
  for (const BenchPoint& point : sweep_.points) {
    if (point.world == session_.world()) {
      points.push_back(point);
    } else {
      ++other_worlds[point.world];
    }
  }
  if (points.empty()) {
    throw UserError(sweep_.source + ": sweep.world: this job has " + std::to_string(session_.world()) +
                    " rank(s), and no point has that world; run launch/mla_bench.sh " + sweep_.source +
                    " (it starts mpirun -np W for each world)");
  }
  if (session_.rank() == 0 && !other_worlds.empty()) {
    std::string skipped;
    for (const auto& [world, count] : other_worlds) {
      skipped += " " + std::to_string(count) + " at world " + std::to_string(world) + ";";
    }
    std::fprintf(stderr,
                 "mla_bench: running the %zu points of world %d; skipping%s launch/mla_bench.sh runs every world\n",
                 points.size(), session_.world(), skipped.c_str());
  }
  return points;
}

void Bench::prepare_outputs() {
  const BenchSettings& bench = sweep_.bench;
  phases_.run([&] {
    check_kernel_environment();
    if (session_.rank() != 0) return;
    for (const std::string& line : check_output_paths({{"bench.csv", bench.csv}, {"bench.jsonl", bench.jsonl}},
                                                      files_read(sweep_.base, session_.world(), "the sweep file"))) {
      std::printf("mla_bench: %s\n", line.c_str());
    }
    if (existing_ == ExistingRows::Append) {
      csv_.keep_existing_rows();
      jsonl_.keep_existing_rows();
    } else if (existing_ == ExistingRows::Refuse) {
      std::set<std::string> others = csv_.existing_values("world");
      others.erase(std::to_string(session_.world()));
      if (!others.empty()) {
        std::string list;
        for (const std::string& world : others) list += (list.empty() ? "" : ", ") + world;
        throw UserError("bench.csv: " + bench.csv + " holds rows of world " + list + ", which this run (world " +
                        std::to_string(session_.world()) +
                        ") would replace: give --append to add to them, or "
                        "--overwrite to replace the file");
      }
    }
    machine_ = describe_machine(MLA_SOURCE_DIR);
    machine_.emplace_back("copy_gbps", significant(measure_copy_gbps(omp_get_max_threads())));
    // Before the first point pins this thread to one CPU (configure_rank_threads): the baseline's
    // process inherits its parent's CPU mask, and must get all of the rank's CPUs.
    start_baseline();
  });
}

void Bench::describe_job(size_t point_count) {
  machine_.emplace_back("mpi", mpi_library_version());
  machine_.emplace_back("ranks_per_node", std::to_string(session_.local_size()));
  for (auto& entry : describe_gpu(session_.local_rank())) machine_.push_back(std::move(entry));
  std::printf("mla_bench: %s, %zu points at world %d; machine: %s; baseline: %s\n", sweep_.source.c_str(), point_count,
              session_.world(), machine_summary(machine_).c_str(), baseline_note_.c_str());
  std::fflush(stdout);
}

PointSetup Bench::set_up(const BenchPoint& point) {
  PointSetup setup;
  phases_.run([&] {
    setup.config = point_config(sweep_, point);
    const Config& config = setup.config;
    check_communicator(point.backend, config.parallel.communicator);
    setup.threads =
        configure_rank_threads(point.threads, config.run.pin_threads, session_.local_rank(), session_.local_size())
            .count;
    setup.shard =
        shard_model_heads(config.model.n_heads, session_.world(), session_.rank(), config.parallel.uneven_heads);
    const std::vector<int64_t> steps = config.run.schedule.steps(point.seq_len);
    check_cache_holds(
        latent_cache_shape(config.model, config.run.kv_cache, config.run.compute_dtype == ComputeDType::BF16),
        point.batch, point.seq_len);
    if (point.backend != Backend::Cuda) {  // the CPU layer's plan; a GPU's memory is its own
      check_memory_fits(
          plan_memory(config.model, config.run, setup.shard, point.batch, point.seq_len, steps, setup.threads),
          session_.local_size(), available_memory_bytes());
    }
    session_.watchdog()->progress("loading weights");
    setup.loaded = &weights_.get(config, setup.shard, session_.world());
    setup.x = load_input(config.run.input, config.model, config.run.check_finite);
    reset_peak_rss();
  });
  return setup;
}

// The FLOPs and bytes of the timed step, counted as the layer ran it (its formulation; bf16
// operands where the weights were streamed or multiplied as bf16).
StepCost Bench::cost_of(const BenchPoint& point, const PointSetup& setup, const Measurement& measured) const {
  if (point.ragged()) return ragged_cost(point, setup, measured);
  StepShapeArgs shape;
  shape.n_local_heads = setup.shard.n_local_heads;
  shape.batch = point.batch;
  shape.seq = point.step_len();
  shape.start_pos = point.start_pos();
  shape.formulation = measured.report.plan.formulation;
  if (setup.config.run.compute_dtype == ComputeDType::BF16 &&
      (point.backend == Backend::Cuda || measured.linear_implementation.find("bf16") != std::string::npos)) {
    shape.weight_element_bytes = 2;
    shape.activation_element_bytes = 2;
  }
  return step_cost(setup.config.model, shape);
}

// A ragged step: each sequence's cost as a step of its own, summed, except that the weights are
// read once for the whole step.
StepCost Bench::ragged_cost(const BenchPoint& point, const PointSetup& setup, const Measurement& measured) const {
  StepCost total;
  for (const BenchPoint::Sequence& sequence : point.sequences(sweep_.bench.seed)) {
    StepShapeArgs shape;
    shape.n_local_heads = setup.shard.n_local_heads;
    shape.batch = 1;
    shape.seq = sequence.new_tokens;
    shape.start_pos = sequence.start_pos;
    shape.formulation = measured.report.plan.formulation;
    if (setup.config.run.compute_dtype == ComputeDType::BF16 &&
        measured.linear_implementation.find("bf16") != std::string::npos) {
      shape.weight_element_bytes = 2;
      shape.activation_element_bytes = 2;
    }
    const StepCost one = step_cost(setup.config.model, shape);
    total.gemm_flop += one.gemm_flop;
    total.replicated_flop += one.replicated_flop;
    total.formulation_flop += one.formulation_flop;
    total.attention_flop += one.attention_flop;
    total.norm_rope_flop += one.norm_rope_flop;
    total.weight_bytes = one.weight_bytes;
    total.cache_bytes += one.cache_bytes;
    total.activation_bytes += one.activation_bytes;
    total.expanded_kv_bytes += one.expanded_kv_bytes;
  }
  return total;  // no GEMM list: the step's GEMMs are batched over sequences, not per sequence
}

// The public columns (docs/performance.md: names and order kept), then ours, in kColumns' order.
ResultRow Bench::csv_row(const PointResult& r) const {
  const BenchPoint& point = r.point;
  const Measurement& measured = r.measured;
  const TimeSummary step = summarize_times(measured.step_ms);
  const TimeSummary attention = summarize_times(measured.attention_ms);
  const bool cpu = point.backend != Backend::Cuda;
  const BaselineRun& eager = baseline_run(r, TorchVariant::Eager);
  const bool has_torch = eager.ok();
  const double torch_median = has_torch ? eager.answer.value("median_ms", NAN) : NAN;
  const auto torch_number = [&](const char* key) { return has_torch ? significant(eager.answer.value(key, NAN)) : ""; };
  // A variant's columns: its median, our speedup over it, its output against ours.
  const auto variant_columns = [&](TorchVariant variant) {
    const BaselineRun& run = baseline_run(r, variant);
    const double median = run.ok() ? run.answer.value("median_ms", NAN) : NAN;
    return std::vector<std::string>{significant(median), run.ok() ? significant(median / step.median, 4) : "",
                                    run.ok() ? significant(run.rel_l2, 3) : ""};
  };
  const std::vector<std::string> compiled = variant_columns(TorchVariant::Compile);
  const std::vector<std::string> graphed = variant_columns(TorchVariant::Graph);
  const auto torch_bytes = [&](const char* key) {
    const Json value = has_torch ? eager.answer.value(key, Json()) : Json();
    return value.is_number_integer() && value.get<int64_t>() >= 0 ? std::to_string(value.get<int64_t>()) : "";
  };
  ResultRow row;
  row.add("backend", to_string(point.backend))
      .add("world", std::to_string(point.world))
      .add("threads", std::to_string(r.setup->threads))
      .add("batch", std::to_string(point.batch))
      .add("seq_len", std::to_string(point.seq_len))
      .add("phase", to_string(point.phase))
      .add("attention", to_string(point.attention))
      .add("formulation", to_string(point.formulation))
      .add("compute_dtype", to_string(point.compute_dtype))
      .add("weights_dtype", r.setup->loaded->storage_dtype)
      .add("path_chosen", to_string(measured.report.plan.path))
      .add("formulation_chosen", to_string(measured.report.plan.formulation))
      .add("median_ms", significant(step.median))
      .add("min_ms", significant(step.min))
      .add("p90_ms", significant(step.p90))
      .add("allreduce_ms", significant(summarize_times(measured.allreduce_ms).median))
      .add("gflops", significant(r.cost.flop() / step.median / 1e6))
      .add("gbps", significant(r.cost.bytes() / step.median / 1e6))
      .add("workspace_bytes", std::to_string(measured.report.attention_workspace_bytes))
      .add("peak_rss_bytes", std::to_string(r.peak_rss_bytes))
      .add("chunk", std::to_string(point.chunk))
      .add("kv_len", std::to_string(point.seq_len))
      // A ragged step's sequences each have their own: step_total_tokens and mean_kv_len say it.
      .add("start_pos", point.ragged() ? "" : std::to_string(point.start_pos()))
      .add("step_tokens", point.ragged() ? "" : std::to_string(point.step_len()))
      .add("n_local_heads", std::to_string(r.setup->shard.n_local_heads))
      .add("reps", std::to_string(measured.step_ms.size()))
      .add("flop", significant(r.cost.flop(), 10))
      .add("bytes", significant(r.cost.bytes(), 10))
      .add("linear_flop", significant(r.cost.gemm_flop, 10))
      .add("replicated_flop", significant(r.cost.replicated_flop, 10))
      .add("gemm_only_ms", significant(r.gemm_only_ms))
      .add("device_peak_bytes", std::to_string(measured.device_bytes))
      .add("torch_median_ms", significant(torch_median))
      .add("torch_min_ms", torch_number("min_ms"))
      .add("torch_p90_ms", torch_number("p90_ms"))
      .add("torch_formulation", has_torch ? eager.answer.value("formulation", std::string()) : "")
      .add("speedup_vs_torch", has_torch ? significant(torch_median / step.median, 4) : "")
      .add("torch_rel_l2", has_torch ? significant(eager.rel_l2, 3) : "")
      .add("sweep", sweep_.name)
      .add("weight_bytes", measured.weight_bytes > 0 ? std::to_string(measured.weight_bytes) : "")
      .add("weight_gbps",
           measured.weight_bytes > 0 ? significant(static_cast<double>(measured.weight_bytes) / step.median / 1e6) : "")
      .add("linear_ms", cpu ? significant(summarize_times(measured.linear_ms).median) : "")
      .add("attention_ms", significant(attention.median))
      .add("device_used_bytes", cpu ? "" : std::to_string(measured.device_used_bytes))
      .add("kv_distribution", point.phase == BenchPhase::RaggedDecode ? to_string(point.kv_distribution) : "")
      .add("mean_kv_len", significant(mean_kv_len(point, sweep_.bench.seed)))
      .add("step_total_tokens", std::to_string(step_total_tokens(point, sweep_.bench.seed)))
      .add("kv_cache", kv_cache_text(r.setup->config.run.kv_cache))
      .add("context_parallel", std::to_string(point.context_parallel))
      .add("kv_pool_bytes", measured.kv_pool_bytes > 0 ? std::to_string(measured.kv_pool_bytes) : "")
      .add("attention_bytes", std::to_string(measured.attention_bytes))
      .add("attention_gbps", attention.median > 0
                                 ? significant(static_cast<double>(measured.attention_bytes) / attention.median / 1e6)
                                 : "")
      .add("step_byte_floor", std::to_string(measured.step_byte_floor))
      .add("context_bytes", point.context_parallel > 1 ? std::to_string(measured.report.context_bytes) : "")
      .add("torch_peak_bytes", torch_bytes("peak_bytes"))
      .add("torch_compile_median_ms", compiled[0])
      .add("speedup_vs_torch_compile", compiled[1])
      .add("torch_compile_rel_l2", compiled[2])
      .add("torch_graph_median_ms", graphed[0])
      .add("speedup_vs_torch_graph", graphed[1])
      .add("torch_graph_rel_l2", graphed[2])
      .add("device_process_bytes",
           !cpu && measured.device_process_bytes >= 0 ? std::to_string(measured.device_process_bytes) : "")
      .add("torch_device_process_bytes", torch_bytes("process_device_bytes"))
      .add("cuda_graph_replays", cpu ? "" : std::to_string(measured.graph_replays))
      .add("copy_gbps", machine_entry(machine_, cpu ? "copy_gbps" : "gpu_copy_gbps"))
      .add("attention_flop", significant(r.cost.attention_flop, 10))
      .add("attention_tflops", attention.median > 0 ? significant(r.cost.attention_flop / attention.median / 1e9) : "");
  return row;
}

// The JSONL record: the CSV row's values under "result", then what a CSV cell cannot hold (every
// timing, the plan's reason, the GEMM shapes, the whole config, the machine, the baseline).
Json Bench::jsonl_record(const PointResult& r, const ResultRow& row) const {
  Json record;
  for (const auto& [column, value] : row.cells()) record["result"][column] = value;
  record["point"] = r.point.label();
  record["times_ms"] = r.measured.step_ms;
  record["allreduce_times_ms"] = r.measured.allreduce_ms;
  record["plan_reason"] = r.measured.report.plan.reason;
  if (!r.measured.linear_implementation.empty()) record["linear_implementation"] = r.measured.linear_implementation;
  record["gemms"] = Json::array();
  for (const GemmShape& gemm : r.cost.gemms) {
    record["gemms"].push_back(
        {{"name", gemm.name}, {"m", gemm.m}, {"n", gemm.n}, {"k", gemm.k}, {"batch", gemm.batch}});
  }
  for (const auto& [key, value] : config_entries(r.setup->config)) record["config"][key] = value;
  for (const auto& [key, value] : machine_) record["machine"][key] = value;
  // "baseline": the eager variant's answer, or why there is none; the other variants beside it.
  for (const auto& [variant, run] : r.torch) {
    const Json answer = run.answer.is_null() ? Json(baseline_note_) : run.answer;
    if (variant == TorchVariant::Eager) {
      record["baseline"] = answer;
    } else {
      record["baseline_variants"][to_string(variant)] = answer;
    }
  }
  if (!record.contains("baseline")) {
    record["baseline"] = baseline_ ? Json("not run (bench.torch_variants has no eager)") : Json(baseline_note_);
  }
  return record;
}

void Bench::print_point(const PointResult& r) const {
  const Measurement& measured = r.measured;
  const TimeSummary step = summarize_times(measured.step_ms);
  std::printf(
      "%s: %s/%s, median %.3f ms (min %.3f, p90 %.3f, all-reduce %.3f) x%zu, %.1f GFLOP/s, %.1f GB/s, "
      "workspace %ld B, peak RSS %.0f MB",
      r.point.label().c_str(), to_string(measured.report.plan.path), to_string(measured.report.plan.formulation),
      step.median, step.min, step.p90, summarize_times(measured.allreduce_ms).median, measured.step_ms.size(),
      r.cost.flop() / step.median / 1e6, r.cost.bytes() / step.median / 1e6,
      static_cast<long>(measured.report.attention_workspace_bytes), static_cast<double>(r.peak_rss_bytes) / 1e6);
  if (std::isfinite(r.gemm_only_ms)) {
    std::printf(", GEMMs alone %.3f ms (in the step: linear %.3f, attention %.3f)", r.gemm_only_ms,
                summarize_times(measured.linear_ms).median, summarize_times(measured.attention_ms).median);
  }
  for (const auto& [variant, run] : r.torch) {
    const char* name = variant == TorchVariant::Eager ? "torch" : to_string(variant);
    if (run.ok()) {
      const double torch_median = run.answer.value("median_ms", NAN);
      std::printf("; %s %.3f ms (%s): ours %.2fx, rel L2 %.2g", name, torch_median,
                  run.answer.value("formulation", std::string()).c_str(), torch_median / step.median, run.rel_l2);
    } else if (run.answer.is_object()) {
      std::printf("; %s: %s", name, run.answer.value("error", std::string("failed")).c_str());
    }
  }
  std::printf("\n");
  std::fflush(stdout);
}

int Bench::run() {
  const bool leader = session_.rank() == 0;
  const std::vector<BenchPoint> points = points_of_this_world();
  prepare_outputs();
  if (leader) describe_job(points.size());

  const auto sweep_started = Clock::now();
  for (size_t index = 0; index < points.size(); ++index) {
    PointResult result;
    result.point = points[index];
    BenchPoint& point = result.point;
    phases_.run([&] { point.backend = resolve_backend(point.backend, "sweep.backend (" + point.label() + ")"); });
    if (leader) {
      const double elapsed = ms_since(sweep_started) / 1e3;
      const std::string eta = index == 0
                                  ? "?"
                                  : std::to_string(static_cast<int>(elapsed / static_cast<double>(index) *
                                                                    static_cast<double>(points.size() - index))) +
                                        " s";
      std::fprintf(stderr, "mla_bench: [%zu/%zu] %s (elapsed %.0f s, ETA %s)\n", index + 1, points.size(),
                   point.label().c_str(), elapsed, eta.c_str());
    }
    const PointSetup setup = set_up(point);
    result.setup = &setup;
    result.measured = point.ragged() ? measure_ragged(setup.config, point, setup.shard, setup.loaded->weights, setup.x)
                                     : measure(setup.config, point, setup.shard, setup.loaded->weights, setup.x);
    result.peak_rss_bytes = peak_rss_bytes();
    result.cost = cost_of(point, setup, result.measured);
    if (leader) {
      session_.watchdog()->progress("GEMMs alone, then the PyTorch baseline");
      // The ragged phases have neither: their GEMMs are batched over sequences of different shapes,
      // and the baseline takes uniform steps.
      if (point.backend != Backend::Cuda && !point.ragged()) {
        result.gemm_only_ms = time_gemms_alone(result.cost, setup.threads, setup.config.run.compute_dtype);
      }
#if MLA_HAVE_CUDA
      if (point.backend == Backend::Cuda && !point.ragged()) {
        result.gemm_only_ms = time_gemms_alone_cuda(result.cost, setup.config.run.compute_dtype);
      }
#endif
      for (const TorchVariant variant : sweep_.bench.torch_variants) {
        if (fills_by_fork(point, sweep_.bench.fill)) {
          result.torch[variant].answer =
              Json{{"ok", false}, {"error", "not run: bench.fill fork (the baseline computes every sequence)"}};
        } else if (!point.ragged()) {
          result.torch[variant] = run_baseline(setup.config, point, setup.shard, setup.loaded->weights, setup.x,
                                               result.measured, setup.threads, variant);
        }
      }
    }
    quiet_barrier(session_);
    if (!leader) continue;
    const ResultRow row = csv_row(result);
    csv_.add(row);
    csv_.write();
    jsonl_.add_line(jsonl_record(result, row).dump());
    jsonl_.write();
    print_point(result);
  }
  if (leader) {
    std::printf("mla_bench: %zu points in %.1f s -> %s, %s\n", points.size(), ms_since(sweep_started) / 1e3,
                sweep_.bench.csv.c_str(), sweep_.bench.jsonl.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  const bool leader = mla::launcher_rank() == "0";
  CLI::App app{"Runs a benchmark sweep (YAML) of the MLA layer; writes one CSV and one JSONL row per point."};
  app.option_defaults()->always_capture_default();
  app.footer(
      "Exit codes: 0 done; 2 bad input (the sweep file, a key, an output file); 3 a rank failed during the\n"
      "run (died, stalled past parallel.timeout_s); 1 an internal error.");
  std::string sweep_path;
  std::vector<std::string> overrides;
  bool append = false;
  bool overwrite = false;
  bool list = false;
  app.add_option("sweep", sweep_path, "sweep file: model/weights/run/parallel sections, sweep: lists, bench: budget")
      ->required();
  app.add_option("--set", overrides, "override a key of the sweep file: section.key=value (YAML value); repeatable");
  CLI::Option* append_flag =
      app.add_flag("--append", append, "keep the rows already in bench.csv / bench.jsonl (same header) and add these");
  app.add_flag("--overwrite", overwrite,
               "replace bench.csv / bench.jsonl even when they hold rows of other worlds (without either flag, a "
               "CSV holding rows of another world is refused)")
      ->excludes(append_flag);
  app.add_flag("--list", list, "print the sweep's world sizes and output files, and exit (for launch/mla_bench.sh)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return leader ? app.exit(help) : 0;
  } catch (const CLI::ParseError& error) {
    if (leader) std::fprintf(stderr, "mla_bench: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  }
  mla::Sweep sweep;
  try {
    sweep = mla::load_sweep(sweep_path, overrides);
  } catch (const mla::UserError& error) {
    if (leader) std::fprintf(stderr, "mla_bench: error: %s\n", error.what());
    return mla::kUserErrorExitCode;
  }
  if (list) {
    std::vector<int> worlds;
    for (const mla::BenchPoint& point : sweep.points) {
      if (std::find(worlds.begin(), worlds.end(), point.world) == worlds.end()) worlds.push_back(point.world);
    }
    std::printf("worlds:");
    for (int world : worlds) std::printf(" %d", world);
    std::printf("\npoints: %zu\ncsv: %s\njsonl: %s\n", sweep.points.size(), sweep.bench.csv.c_str(),
                sweep.bench.jsonl.c_str());
    return 0;
  }
  return mla::run_mpi_command("mla_bench", &argc, &argv, {sweep.base.parallel.timeout_s, "parallel.timeout_s", ""},
                              [&](mla::MpiSession& session) {
                                session.watchdog()->set_before_exit(mla::remove_unfinished_temporaries);
                                mla::Bench bench(session, std::move(sweep),
                                                 append      ? mla::ExistingRows::Append
                                                 : overwrite ? mla::ExistingRows::Overwrite
                                                             : mla::ExistingRows::Refuse);
                                return bench.run();
                              });
}
