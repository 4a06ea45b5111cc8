// mla_cuda_bench [--csv FILE] [--reps N] [--warmup N] [--batch B] [--phase P] [--seq S] [--attention A] [--help]
//
// The seed's table on a GPU: a DeepSeek-V3-sized layer slice (dim 7168, q_lora_rank 1536,
// kv_lora_rank 512, 16 local heads as at TP 8), bf16 compute, batch 32, kv length 64, 128, 256,
// 512, prefill (S tokens from position 0) and decode (one token at kv length S), fast path vs
// standard path (the fast path stops at fast_path_max_len 256, as in the claim), and what `auto`
// chooses. Each point:
// warm-up, then CUDA-event timing of forward steps, median / min / p90; the layer's device bytes
// (weights, cache, activations, attention workspace) and the attention workspace alone.
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_memory.h"
#include "runtime/base/errors.h"
#include "runtime/base/random_values.h"
#include "runtime/base/user_files.h"
#include "runtime/bench/harness.h"
#include "runtime/bench/machine_info.h"
#include "runtime/io/weights.h"
#include "runtime/layer/mla_layer_cuda.h"

namespace mla {
namespace {

struct Options {
  std::string csv;
  int reps = 20;
  int warmup = 3;
  int64_t batch = 32;
  // Empty or 0: every phase, length and path of the table; set, one of them (for a profiler).
  std::string phase, attention;
  int64_t seq_len = 0;
};

constexpr int kExitDone = 0, kExitBadInput = 2, kExitNoDevice = 77;

void print_help() {
  const Options defaults;
  std::printf(
      "mla_cuda_bench: the seed's table on a GPU (DeepSeek-V3 slice, 16 local heads, bf16 compute).\n"
      "usage: mla_cuda_bench [options]\n"
      "  --csv FILE        also write one row per point here (atomically, at the end); default: none\n"
      "  --reps N          timed steps per point; default %d\n"
      "  --warmup N        untimed steps before them; default %d\n"
      "  --batch B         sequences per step; default %ld\n"
      "  --phase P         prefill or decode only; default: both\n"
      "  --seq S           one kv length only (64, 128, 256 or 512); default: all four\n"
      "  --attention A     standard, fast or auto only; default: all three\n"
      "  --help            this text\n"
      "exit codes: %d done; %d bad input (an option, the CSV path); %d no CUDA device (nothing measured);\n"
      "1 an internal or CUDA error\n",
      defaults.reps, defaults.warmup, static_cast<long>(defaults.batch), kExitDone, kExitBadInput, kExitNoDevice);
}

// A whole decimal integer in [min_value, max_value], or a UserError naming the option.
int64_t parse_integer(const std::string& option, const std::string& text, int64_t min_value, int64_t max_value) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < min_value || value > max_value) {
    throw UserError(option + ": expected an integer in [" + std::to_string(min_value) + ", " +
                    std::to_string(max_value) + "], got '" + text + "'");
  }
  return value;
}

std::string parse_choice(const std::string& option, const std::string& text, const std::vector<std::string>& names) {
  if (std::find(names.begin(), names.end(), text) != names.end()) return text;
  std::string allowed;
  for (const std::string& name : names) allowed += (allowed.empty() ? "" : " | ") + name;
  throw UserError(option + ": expected " + allowed + ", got '" + text + "'");
}

// Returns false when --help was asked (and printed).
bool parse(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_help();
      return false;
    }
    if (i + 1 >= argc) throw UserError(arg + ": unknown option, or its value is missing (see --help)");
    const std::string value = argv[++i];
    if (arg == "--csv") {
      options.csv = value;
    } else if (arg == "--reps") {
      options.reps = static_cast<int>(parse_integer(arg, value, 1, 1000000));
    } else if (arg == "--warmup") {
      options.warmup = static_cast<int>(parse_integer(arg, value, 0, 1000000));
    } else if (arg == "--batch") {
      options.batch = parse_integer(arg, value, 1, 4096);
    } else if (arg == "--phase") {
      options.phase = parse_choice(arg, value, {"prefill", "decode"});
    } else if (arg == "--seq") {
      options.seq_len = std::stoll(parse_choice(arg, value, {"64", "128", "256", "512"}));
    } else if (arg == "--attention") {
      options.attention = parse_choice(arg, value, value_names<AttentionChoice>());
    } else {
      throw UserError(arg + ": unknown option (see --help)");
    }
  }
  return true;
}

ModelArgs deepseek_v3_slice(int64_t batch) {
  ModelArgs m;
  m.dim = 7168;
  m.n_heads = 16;  // the 16 heads of one rank at TP 8, held whole here
  m.q_lora_rank = 1536;
  m.kv_lora_rank = 512;
  m.qk_nope_head_dim = 128;
  m.qk_rope_head_dim = 64;
  m.v_head_dim = 128;
  m.max_batch_size = batch;
  m.max_seq_len = 512;
  return m;
}

// The CSV's columns, in the order of its header (docs/results/ and launch/cuda_seed_to_bench_csv.py
// read them).
const std::vector<std::string> kCsvColumns = {"device",
                                              "phase",
                                              "seq_len",
                                              "batch",
                                              "attention",
                                              "path_chosen",
                                              "formulation_chosen",
                                              "median_ms",
                                              "min_ms",
                                              "p90_ms",
                                              "attention_workspace_bytes",
                                              "layer_device_bytes",
                                              "device_peak_bytes",
                                              "device_used_bytes"};

// The forward steps of one point, each timed by CUDA events on the layer's stream: options.warmup
// untimed, then options.reps timed. A profiler started with --profile-from-start off sees the
// last timed step only.
std::vector<double> time_steps(const Options& options, CudaMlaLayer& layer, const DeviceBuffer<float>& x,
                               DeviceBuffer<float>& y, int64_t step_len, int64_t start_pos, StepReport& report) {
  cudaEvent_t begin, end;
  CUDA_CHECK(cudaEventCreate(&begin));
  CUDA_CHECK(cudaEventCreate(&end));
  const int64_t last_step = options.warmup + options.reps - 1;
  int64_t step = 0;
  const RepBudget budget{options.warmup, options.reps, options.reps, INFINITY};
  const std::vector<double> times_ms = time_repetitions(budget, [&] {
    if (step++ == last_step) CUDA_CHECK(cudaProfilerStart());
    CUDA_CHECK(cudaEventRecord(begin, layer.stream()));
    report = layer.forward_device(x.data(), options.batch, step_len, start_pos, nullptr, 0, y.data());
    CUDA_CHECK(cudaEventRecord(end, layer.stream()));
    CUDA_CHECK(cudaEventSynchronize(end));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
    return static_cast<double>(ms);
  });
  CUDA_CHECK(cudaProfilerStop());
  CUDA_CHECK(cudaEventDestroy(begin));
  CUDA_CHECK(cudaEventDestroy(end));
  return times_ms;
}

int run(const Options& options) {
  CUDA_CHECK(cudaSetDevice(0));
  MachineEntries machine = describe_machine(MLA_SOURCE_DIR);
  for (auto& entry : describe_gpu(0)) machine.push_back(std::move(entry));
  const std::string device_name = machine_entry(machine, "gpu_name");
  const ModelArgs m = deepseek_v3_slice(options.batch);
  const HeadShard shard = shard_heads(m.n_heads, 1, 0, false);
  WeightsConfig random;
  random.format = WeightsFormat::Random;
  random.dtype = WeightDType::BF16;
  random.seed = 1;
  const LoadedWeights loaded = load_layer_weights(random, m, shard, ComputeDType::BF16, false);
  std::printf("machine: %s\nmodel: DeepSeek-V3 slice, 16 local heads, bf16 compute, batch %ld\n",
              machine_summary(machine).c_str(), static_cast<long>(options.batch));
  ResultFile csv = ResultFile::csv(options.csv, kCsvColumns);
  std::printf("%-8s %5s %-9s %-8s %-7s %10s %10s %10s %14s %14s\n", "phase", "seq", "attention", "path", "form",
              "median_ms", "min_ms", "p90_ms", "workspace_MB", "layer_MB");
  for (const char* phase : {"prefill", "decode"}) {
    const bool decode = std::strcmp(phase, "decode") == 0;
    if (!options.phase.empty() && options.phase != phase) continue;
    for (const int64_t seq_len : {64, 128, 256, 512}) {
      if (options.seq_len != 0 && options.seq_len != seq_len) continue;
      for (const AttentionChoice attention :
           {AttentionChoice::Standard, AttentionChoice::Fast, AttentionChoice::Auto}) {
        if (attention == AttentionChoice::Fast && seq_len > 256) continue;  // no fast path there (the claim's 512 row)
        if (!options.attention.empty() && options.attention != to_string(attention)) continue;
        RunConfig run;
        run.compute_dtype = ComputeDType::BF16;
        run.attention = attention;
        run.score_chunk_bytes = int64_t{1} << 40;  // no query chunking: every row of a sequence at once
        const int64_t step_len = decode ? 1 : seq_len;
        // Measured on one basis with the PyTorch baseline's: the most this point held through our
        // allocations (its layer, input and output), and what the driver says the process uses.
        reset_device_memory_peak();
        CudaMlaLayer layer(m, shard, loaded.weights, run, {options.batch, seq_len, seq_len, false});
        DeviceBuffer<float> x(options.batch * seq_len * m.dim), y(options.batch * seq_len * m.dim);
        std::vector<float> host_x(static_cast<size_t>(x.size()));
        const uint64_t key = random_stream_key(7, "x");
        for (size_t i = 0; i < host_x.size(); ++i) host_x[i] = random_uniform(key, i);
        x.upload(host_x, layer.stream());
        // Decode: fill the cache with seq_len - 1 positions first, then time the step at seq_len.
        const int64_t start_pos = decode ? seq_len - 1 : 0;
        if (decode) layer.forward_device(x.data(), options.batch, seq_len - 1, 0, nullptr, 0, y.data());
        StepReport report;
        const TimeSummary t = summarize_times(time_steps(options, layer, x, y, step_len, start_pos, report));
        const CudaMemoryReport& memory = layer.memory();
        std::printf("%-8s %5ld %-9s %-8s %-7s %10.3f %10.3f %10.3f %14.1f %14.1f\n", phase, static_cast<long>(seq_len),
                    to_string(attention), to_string(report.plan.path), to_string(report.plan.formulation), t.median,
                    t.min, t.p90, static_cast<double>(report.attention_workspace_bytes) / 1e6,
                    static_cast<double>(memory.total()) / 1e6);
        ResultRow row;
        row.add("device", device_name)
            .add("phase", phase)
            .add("seq_len", std::to_string(seq_len))
            .add("batch", std::to_string(options.batch))
            .add("attention", to_string(attention))
            .add("path_chosen", to_string(report.plan.path))
            .add("formulation_chosen", to_string(report.plan.formulation))
            .add("median_ms", fixed(t.median, 4))
            .add("min_ms", fixed(t.min, 4))
            .add("p90_ms", fixed(t.p90, 4))
            .add("attention_workspace_bytes", std::to_string(report.attention_workspace_bytes))
            .add("layer_device_bytes", std::to_string(memory.total()))
            .add("device_peak_bytes", std::to_string(device_memory_use().peak_bytes))
            .add("device_used_bytes", std::to_string(device_memory_used_by_driver()));
        csv.add(row);
      }
    }
  }
  if (!options.csv.empty()) csv.write();
  return kExitDone;
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  mla::Options options;
  try {
    if (!mla::parse(argc, argv, options)) return mla::kExitDone;
    if (!options.csv.empty()) mla::check_output_paths({{"--csv", options.csv}}, {});
  } catch (const mla::UserError& error) {
    std::fprintf(stderr, "mla_cuda_bench: error: %s\n", error.what());
    return mla::kExitBadInput;
  }
  if (mla::cuda_device_count() == 0) {
    std::fprintf(stderr, "mla_cuda_bench: no CUDA device on this machine; nothing measured\n");
    return mla::kExitNoDevice;
  }
  try {
    return mla::run(options);
  } catch (const mla::UserError& error) {
    std::fprintf(stderr, "mla_cuda_bench: error: %s\n", error.what());
    return mla::kExitBadInput;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "mla_cuda_bench: error: %s\n", error.what());
    return 1;
  }
}
