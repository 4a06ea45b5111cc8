// What every benchmark program shares (mla_bench, mla_cuda_bench, mla_allreduce_bench), so that
// their numbers mean the same thing: one statistic over repeated timings, one rule for how many
// repetitions a budget allows, one way to write the machine next to the numbers, and one writer
// of result files whose rows are (column, value) pairs, rewritten atomically.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/bench/machine_info.h"

namespace mla {

// ---- timing ------------------------------------------------------------------------------------

// The summary of one point's timings, in the unit they were taken in. The median is the mean of
// the middle two for an even count; p90 is the nearest-rank 90th percentile (the value at rank
// ceil(0.9 n)), as launch/torch_mla_baseline.py computes it, so the two sides of a comparison
// use the same statistic.
struct TimeSummary {
  double median = 0, min = 0, p90 = 0, max = 0;
  int64_t count = 0;
};
TimeSummary summarize_times(std::vector<double> times);

// How many timed repetitions a point gets: `warmup` untimed ones first, then at least min_reps
// timed, more while the timed ones took under max_seconds, never more than max_reps.
struct RepBudget {
  int64_t warmup = 3;
  int64_t min_reps = 5;
  int64_t max_reps = 1000;
  double max_seconds = 1.0;

  // Whether another timed repetition follows `reps_done` of them that took `spent_s` in all.
  bool wants_more(int64_t reps_done, double spent_s) const;
  // For a loop whose count must be fixed in advance (every rank making the same calls): the
  // repetitions at `seconds_per_rep` that fit what is left of max_seconds after `spent_s`, within
  // [min_reps, max_reps].
  int64_t reps_that_fit(double spent_s, double seconds_per_rep) const;
};

// Runs `step` budget.warmup times, then again while budget.wants_more(); `step` returns its own
// time in milliseconds (host clock or device events, as it measures). Returns the timed ones.
std::vector<double> time_repetitions(const RepBudget& budget, const std::function<double()>& step);

// ---- the machine -------------------------------------------------------------------------------

// One line for a benchmark's header: "AMD EPYC, 2 cores (avx2 ... avx512_bf16), memory 24683792 kB;
// Open MPI v4.1.4; NVIDIA H200; commit 74349015b2e4" (the entries present, in that order).
std::string machine_summary(const MachineEntries& entries);

// The GPU of local rank `local_rank` (device local_rank modulo the node's devices, as the layer
// chooses it) as entries: gpu_name, gpu_count, gpu_memory_bytes, gpu_sm_clock_mhz,
// gpu_memory_clock_mhz, cuda_runtime, cuda_driver, nccl, and gpu_copy_gbps, the device's measured
// copy bandwidth (a 256 MiB device-to-device copy, read + write bytes per second). None in a build
// without CUDA or on a machine without a device.
MachineEntries describe_gpu(int local_rank);

// ---- result files ------------------------------------------------------------------------------

// One row of a table: every column of the table, in the table's order, with its value as text.
class ResultRow {
 public:
  ResultRow& add(const std::string& column, std::string value);
  const std::vector<std::pair<std::string, std::string>>& cells() const { return cells_; }

 private:
  std::vector<std::pair<std::string, std::string>> cells_;
};

// Numbers in result files: `digits` significant digits ("%g"-like), or `decimals` after the point;
// "" for a value that is not finite (an empty cell: not measured).
std::string significant(double value, int digits = 6);
std::string fixed(double value, int decimals);

// A result file (CSV with a header, or JSONL), kept whole in memory and rewritten atomically by
// write(), so that a run stopped at any moment leaves either the previous file or the new one.
class ResultFile {
 public:
  // A CSV whose header is `columns`; every row must give exactly these columns, in this order.
  static ResultFile csv(std::string path, std::vector<std::string> columns);
  // A JSON object per line.
  static ResultFile jsonl(std::string path);

  // Keeps the rows the file holds now (mla_bench --append). A CSV whose header is not this one
  // is a UserError naming the file.
  void keep_existing_rows();
  // The values of `column` in the rows the CSV at path() holds now ({} when there is no file or
  // its header is not this one): which worlds a sweep's earlier runs wrote, say.
  std::set<std::string> existing_values(const std::string& column) const;

  // A CSV row. A row whose columns are not the header's, in order, is a programming error
  // (std::logic_error): the header and the values can never drift apart.
  void add(const ResultRow& row);
  // A JSONL line (one serialized object, no newline).
  void add_line(std::string line);
  // Rewrites the file with the header and every row, atomically.
  void write() const;

  const std::string& path() const { return path_; }
  const std::vector<std::string>& columns() const { return columns_; }

 private:
  ResultFile(std::string path, std::vector<std::string> columns, bool is_csv);

  std::string header() const;

  std::string path_;
  std::vector<std::string> columns_;
  bool is_csv_ = true;
  std::vector<std::string> lines_;
};

}  // namespace mla
