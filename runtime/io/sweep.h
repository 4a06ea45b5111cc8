// A benchmark sweep (mla_bench SWEEP.yaml): a base config with the sections of mla_run's config,
// a `sweep:` block whose lists are crossed into points, and a `bench:` block with the timing
// budget and the output files. docs/performance.md describes the format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/config.h"

namespace mla {

// ragged_decode: a decode step of `batch` sequences whose kv lengths are drawn from
// kv_distribution (the longest is seq_len); mixed: one prefill chunk of `chunk` tokens ending at
// seq_len beside batch - 1 decodes at kv seq_len, in one step.
enum class BenchPhase { Prefill, ChunkedPrefill, Decode, RaggedDecode, Mixed };
template <>
const std::vector<std::string>& value_names<BenchPhase>();
const char* to_string(BenchPhase value);

// ragged_decode's kv lengths: uniform in [1, seq_len], or longtail (exponential with mean
// seq_len / 8, capped at seq_len: most sequences short, a few long, as serving sees them).
enum class KvDistribution { Uniform, LongTail };
template <>
const std::vector<std::string>& value_names<KvDistribution>();
const char* to_string(KvDistribution value);

enum class BaselineChoice { Auto, Torch, None };
template <>
const std::vector<std::string>& value_names<BaselineChoice>();
const char* to_string(BaselineChoice value);

// How the PyTorch baseline runs its step (bench.torch_variants): eager, the module as written;
// compile, the same module through torch.compile; graph, the step captured in a CUDA graph and
// replayed (CUDA points only).
enum class TorchVariant { Eager, Compile, Graph };
template <>
const std::vector<std::string>& value_names<TorchVariant>();
const char* to_string(TorchVariant value);

// How the cache reaches a decode or chunked_prefill point's start position: `compute`, every
// sequence's positions by one untimed step; `fork`, sequence 0's by a step of its own, copied into
// the others' pages (LatentCache::fork): what makes long contexts at large batch affordable, with
// each sequence still reading its own rows.
enum class BenchFill { Compute, Fork };
template <>
const std::vector<std::string>& value_names<BenchFill>();
const char* to_string(BenchFill value);

struct BenchSettings {
  int64_t warmup = 2;                              // untimed steps before timing
  int64_t min_reps = 5;                            // timed steps, at least
  int64_t max_reps = 1000;                         // and at most
  double max_seconds = 2.0;                        // timed steps continue until their sum reaches this (after min_reps)
  std::string csv;                                 // default results/<sweep name>.csv
  std::string jsonl;                               // default results/<sweep name>.jsonl
  BaselineChoice baseline = BaselineChoice::Auto;  // auto: the PyTorch baseline where torch imports
  std::string python;  // the interpreter of the baseline; default /usr/bin/python3 when present
  std::vector<TorchVariant> torch_variants = {TorchVariant::Eager};  // each timed at every point, in this order
  uint64_t seed = 2;                                                 // the random inputs' seed
  BenchFill fill = BenchFill::Compute;
};

// One measured configuration. kv length at the end of the step = seq_len.
struct BenchPoint {
  int world = 1;
  Backend backend = Backend::Cpu;
  ComputeDType compute_dtype = ComputeDType::FP32;
  int threads = 0;
  int64_t context_parallel = 1;  // parallel.context_parallel: ranks per group splitting the cache
  BenchPhase phase = BenchPhase::Prefill;
  int64_t batch = 1;
  int64_t seq_len = 1;
  int64_t chunk = 0;                                         // chunked_prefill and mixed only
  KvDistribution kv_distribution = KvDistribution::Uniform;  // ragged_decode only
  AttentionChoice attention = AttentionChoice::Auto;
  FormulationChoice formulation = FormulationChoice::Auto;

  // prefill: seq_len tokens from 0; decode: 1 token at seq_len - 1; chunked: chunk tokens ending at
  // seq_len. For the ragged phases, those of the longest sequence (the mixed step's chunk).
  int64_t start_pos() const;
  int64_t step_len() const;
  bool ragged() const { return phase == BenchPhase::RaggedDecode || phase == BenchPhase::Mixed; }

  // The timed step's sequences (start position, new tokens), in slot order: `batch` copies of
  // (start_pos, step_len) for the uniform phases; drawn from `seed` for ragged_decode.
  struct Sequence {
    int64_t start_pos = 0;
    int64_t new_tokens = 0;
  };
  std::vector<Sequence> sequences(uint64_t seed) const;
  std::string label() const;  // "world 2 cpu fp32 decode batch 4 seq 128 attention fast formulation auto"
};

struct Sweep {
  std::string source;                  // the file, for messages
  std::string name;                    // the file's stem
  std::string text;                    // the file's YAML text
  std::vector<std::string> overrides;  // --set, applied to the whole file
  BenchSettings bench;
  Config base;                     // the base config as written (run.input and schedule filled in by the sweep)
  std::vector<BenchPoint> points;  // world outermost, so that one mpirun runs a contiguous block
};

// Throws UserError naming the file (and line) or the --set, and the key, for anything wrong:
// unknown keys, empty lists, values out of range, a seq_len over model.max_seq_len, a world that
// does not divide model.n_heads, a chunk longer than seq_len.
Sweep load_sweep(const std::string& path, const std::vector<std::string>& overrides = {});
Sweep parse_sweep(const std::string& yaml_text, const std::string& source_name,
                  const std::vector<std::string>& overrides = {});

// The full config of one point: the base with the point's run keys, random input
// [batch, seq_len] (batch 1 where the cache is filled by forking) and a schedule [start_pos,
// step_len] (or [seq_len]), max_batch_size = batch, no output file.
Config point_config(const Sweep& sweep, const BenchPoint& point);

// Whether the point's cache is filled by forking sequence 0 (bench.fill fork, a decode or
// chunked_prefill point of more than one sequence).
bool fills_by_fork(const BenchPoint& point, BenchFill fill);

}  // namespace mla
