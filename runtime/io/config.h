// The run configuration: a YAML file with the sections model, weights and run (README: config
// keys), plus `--set section.key=value` overrides. Loading is strict: an unknown key, a wrong
// type or an out-of-range value is a UserError naming the key and where it came from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/io/model_args.h"

namespace mla {

enum class WeightsFormat { DeepSeek, HuggingFace, Random };
enum class WeightDType { BF16, FP8 };
enum class Backend { Cpu, Cuda, Auto };
enum class ComputeDType { FP32, BF16 };
enum class AttentionChoice { Auto, Fast, Standard };
enum class FormulationChoice { Auto, Naive, Absorb };
enum class StepLog { Table, Steps };
enum class Fp8Dequant { Bf16, Exact };
enum class KvCacheLayout { Dense, Paged };
enum class KvCacheDType { Auto, FP32, BF16, FP8 };

// The spelling of each enum's values in configs and logs, in the enum's order (value i is spelled
// value_names<Enum>()[i]): to_string() prints these, and the config and sweep readers accept
// exactly these, so a name is written once.
template <typename Enum>
const std::vector<std::string>& value_names();
// The spelling of `value` ("?" for a value outside the enum): what each to_string() returns.
template <typename Enum>
const char* value_name(Enum value) {
  const std::vector<std::string>& names = value_names<Enum>();
  const size_t index = static_cast<size_t>(value);
  return index < names.size() ? names[index].c_str() : "?";
}
template <>
const std::vector<std::string>& value_names<WeightsFormat>();
template <>
const std::vector<std::string>& value_names<WeightDType>();
template <>
const std::vector<std::string>& value_names<Backend>();
template <>
const std::vector<std::string>& value_names<ComputeDType>();
template <>
const std::vector<std::string>& value_names<AttentionChoice>();
template <>
const std::vector<std::string>& value_names<FormulationChoice>();
template <>
const std::vector<std::string>& value_names<StepLog>();
template <>
const std::vector<std::string>& value_names<Fp8Dequant>();
template <>
const std::vector<std::string>& value_names<KvCacheLayout>();
template <>
const std::vector<std::string>& value_names<KvCacheDType>();
template <>
const std::vector<std::string>& value_names<CommunicatorChoice>();
const char* to_string(CommunicatorChoice value);

const char* to_string(WeightsFormat value);
const char* to_string(WeightDType value);
const char* to_string(Backend value);
const char* to_string(ComputeDType value);
const char* to_string(AttentionChoice value);
const char* to_string(FormulationChoice value);
const char* to_string(StepLog value);
const char* to_string(Fp8Dequant value);
const char* to_string(KvCacheLayout value);
const char* to_string(KvCacheDType value);

struct WeightsConfig {
  WeightsFormat format = WeightsFormat::DeepSeek;
  std::string path;                       // deepseek / hf: a directory or one .safetensors file
  int64_t layer = 0;                      // which layer's attention weights to load
  WeightDType dtype = WeightDType::BF16;  // random only
  uint64_t seed = 1;                      // random only
  // fp8 weights: each dequantized value (code * block scale) rounded to bf16, as DeepSeek's
  // weight_dequant returns the model's bf16 (docs/design.md, Weights), or kept as the exact fp32 product.
  // bf16 compute rounds either way.
  Fp8Dequant fp8_dequant = Fp8Dequant::Bf16;
};

struct InputConfig {
  std::string path;  // safetensors file with tensor "x" [B, T, dim]; empty when random
  bool random = false;
  int64_t batch = 0;
  int64_t tokens = 0;
  uint64_t seed = 0;
};

// One request of continuous batching (docs/design.md, Continuous batching): prompt tokens, then
// `generate` decode steps of one token each, arriving at step `arrival`. Its input is the tensor
// "x.<name>" [prompt + generate, dim] and its output "y.<name>" of the same shape.
struct RequestConfig {
  std::string name;
  int64_t prompt = 0;
  int64_t generate = 0;
  int64_t arrival = 0;
};

// Either a prefill followed by single-token decode steps, or an explicit list of step lengths
// (chunked prefill, then 1s for decode), or a list of requests served by continuous batching.
// Absent: one prefill of every input token.
struct ScheduleConfig {
  bool explicit_chunks = false;
  int64_t prefill = 0;  // 0: all input tokens not taken by decode steps
  int64_t decode_steps = 0;
  std::vector<int64_t> chunks;
  std::vector<RequestConfig> requests;  // non-empty: continuous batching; the input is per request

  // The new-token count of every step, for an input of `tokens` tokens. Throws UserError when
  // the steps do not add up to `tokens`.
  std::vector<int64_t> steps(int64_t tokens) const;
};

// run.kv_cache (docs/design.md, The latent cache): dense, one region of max_seq_len rows per
// sequence slot, or paged, `pages` pages of page_size rows in one pool shared by every sequence
// (0: enough for every slot at max_seq_len). dtype auto stores the compute dtype (fp32 or bf16);
// fp8 stores c_n as e4m3 with a scale per 128 values and k_pe as bf16.
struct KvCacheConfig {
  KvCacheLayout layout = KvCacheLayout::Dense;
  int64_t page_size = 64;
  int64_t pages = 0;
  KvCacheDType dtype = KvCacheDType::Auto;
};

// fast_path_max_len: auto. On the CPU the fused kernel beats the standard path up to about this
// length in prefill (docs/performance.md); the GPU's fused prefill kernels hold a score row of this
// length on chip. Decode-shaped absorb steps are the fused kernels' at any length under auto
// (attention_plan.cpp, choose_path).
inline constexpr int64_t kAutoFastPathMaxLen = 256;

struct RunConfig {
  Backend backend = Backend::Cpu;
  ComputeDType compute_dtype = ComputeDType::FP32;
  AttentionChoice attention = AttentionChoice::Auto;
  FormulationChoice formulation = FormulationChoice::Auto;
  // The fast path takes kv_len up to this. `auto` (the default, fast_path_auto) is each backend's
  // crossover per phase: kAutoFastPathMaxLen, and any length for decode-shaped absorb steps
  // (docs/design.md, The fast path and the standard path).
  int64_t fast_path_max_len = 256;
  bool fast_path_auto = true;
  InputConfig input;
  ScheduleConfig schedule;
  std::string output;       // safetensors file for "y"; empty: not written
  std::string mask;         // optional safetensors file with an additive mask "mask" [T, T]
  int threads = 0;          // 0: every core of the machine
  bool pin_threads = true;  // one CPU per thread (parallel/thread_placement.h), unless OMP_PROC_BIND etc. are set
  // The standard path's score buffers, all threads together; under context parallelism also what a
  // run of the group's gather and exchange holds (context_run_tokens); on the CUDA backend also the
  // absorb formulation's folded queries and latent outputs (a run of tokens at a time).
  int64_t score_chunk_bytes = int64_t{64} << 20;
  KvCacheConfig kv_cache;
  // Continuous batching: the most tokens one step carries, decodes and prefill chunks together.
  int64_t max_step_tokens = 512;
  bool check_finite = true;  // refuse non-finite inputs and weights; stop on a non-finite partial output
  // CUDA backend: a decode step's launches are captured once per shape (docs/cuda_backend.md, The
  // decode step as one CUDA graph) and replayed; false launches them one by one every step.
  bool cuda_graphs = true;
  StepLog log = StepLog::Table;  // table: rank 0 prints one table at the end; steps: every rank, every step
};

struct ParallelConfig {
  CommunicatorChoice communicator = CommunicatorChoice::Auto;  // the CUDA backend's sum
  bool uneven_heads = false;  // allow n_heads % world != 0: the first ranks take one head more
  // Ranks per group that split every sequence's latent cache (docs/design.md, The latent cache split
  // across ranks): each cached position is kept by one rank of its group. 1: every rank keeps all.
  int64_t context_parallel = 1;
  bool check_identical_output = false;  // debug: after the run, ranks compare y bit for bit
  double timeout_s = 300.0;  // a rank with no progress for this long (a step, a collective) ends the job; 0: off
};

// debug.fail: make one rank fail on purpose at one step, to test that the job ends cleanly.
enum class FaultMode { None, Exit, Hang, Nan };
template <>
const std::vector<std::string>& value_names<FaultMode>();
const char* to_string(FaultMode value);

struct FaultPlan {
  FaultMode mode = FaultMode::None;
  int rank = 0;
  int64_t step = 0;  // index into the schedule's steps, from 0
};

// The debug section: switches for testing how a job ends, never for production runs.
struct DebugConfig {
  FaultPlan fail;  // debug.fail: one rank exits, hangs or writes NaN at one step
  // debug.hold: {step: N}: every rank stops at the start of step N and exchanges a small
  // collective with its peers until the job is ended from outside (a test stops a rank there, and
  // the peers' watchdogs must notice). -1: off.
  int64_t hold_step = -1;
  // debug.progress_file: each rank keeps "<path>.rank<R>" holding its pid and what it is doing,
  // rewritten at every step and phase, so that a test can act once a rank has reached a state.
  std::string progress_file;
};

struct Config {
  std::string source;  // the config file's path, for messages
  ModelArgs model;
  WeightsConfig weights;
  RunConfig run;
  ParallelConfig parallel;
  DebugConfig debug;
};

// Every key with its value, "section.key" -> text, in a fixed order: what ranks compare to agree
// that they run the same configuration.
std::vector<std::pair<std::string, std::string>> config_entries(const Config& config);

// config_entries() as "section.key=value" lines, for comparing the config across ranks.
std::string config_text(const Config& config);

// Loads `path`, applies overrides ("section.key=value", value parsed as YAML) in order, and
// validates. Throws UserError on any problem.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text; `source_name` stands for the file in messages.
Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});

}  // namespace mla
