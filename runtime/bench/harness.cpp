#include "runtime/bench/harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"

#if MLA_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include "kernels/cuda/cuda_check.h"
#endif

namespace mla {

TimeSummary summarize_times(std::vector<double> times) {
  TimeSummary summary;
  if (times.empty()) return summary;
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  summary.count = static_cast<int64_t>(n);
  summary.median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
  summary.min = times.front();
  summary.max = times.back();
  summary.p90 = times[static_cast<size_t>(std::ceil(0.9 * static_cast<double>(n))) - 1];
  return summary;
}

bool RepBudget::wants_more(int64_t reps_done, double spent_s) const {
  if (reps_done >= max_reps) return false;
  return reps_done < min_reps || spent_s < max_seconds;
}

int64_t RepBudget::reps_that_fit(double spent_s, double seconds_per_rep) const {
  const double fits = seconds_per_rep > 0 ? (max_seconds - spent_s) / seconds_per_rep : static_cast<double>(max_reps);
  return static_cast<int64_t>(std::clamp<double>(fits, static_cast<double>(min_reps), static_cast<double>(max_reps)));
}

std::vector<double> time_repetitions(const RepBudget& budget, const std::function<double()>& step) {
  for (int64_t i = 0; i < budget.warmup; ++i) step();
  std::vector<double> times_ms;
  double spent_ms = 0.0;
  while (budget.wants_more(static_cast<int64_t>(times_ms.size()), spent_ms / 1e3)) {
    times_ms.push_back(step());
    spent_ms += times_ms.back();
  }
  return times_ms;
}

std::string machine_summary(const MachineEntries& entries) {
  std::string text = machine_entry(entries, "cpu_model") + ", " + machine_entry(entries, "cpu_cores") + " cores";
  const std::string isa = machine_entry(entries, "cpu_isa");
  if (!isa.empty()) text += " (" + isa + ")";
  const std::string memory = machine_entry(entries, "memory_total");
  if (!memory.empty()) text += ", memory " + memory;
  for (const char* key : {"mpi", "gpu_name"}) {
    const std::string value = machine_entry(entries, key);
    if (!value.empty()) text += "; " + value;
  }
  return text + "; commit " + machine_entry(entries, "git_commit");
}

#if MLA_HAVE_CUDA
namespace {

// The device's own copy bandwidth, the limit a decode step's bytes are measured against: a 256 MiB
// device-to-device copy, timed by CUDA events, best of 5 after a warm-up, counted as STREAM counts
// it (bytes read + bytes written per second). Two 256 MiB buffers, freed before any point.
double measure_device_copy_gbps() {
  const size_t bytes = size_t{256} << 20;
  void* source = nullptr;
  void* destination = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t begin = nullptr, end = nullptr;
  double best_ms = INFINITY;
  const auto release = [&] {
    if (begin != nullptr) cudaEventDestroy(begin);
    if (end != nullptr) cudaEventDestroy(end);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (source != nullptr) cudaFree(source);
    if (destination != nullptr) cudaFree(destination);
  };
  try {
    CUDA_CHECK(cudaMalloc(&source, bytes));
    CUDA_CHECK(cudaMalloc(&destination, bytes));
    CUDA_CHECK(cudaMemset(source, 1, bytes));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&begin));
    CUDA_CHECK(cudaEventCreate(&end));
    CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, stream));  // warm-up
    for (int rep = 0; rep < 5; ++rep) {
      CUDA_CHECK(cudaEventRecord(begin, stream));
      CUDA_CHECK(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDeviceToDevice, stream));
      CUDA_CHECK(cudaEventRecord(end, stream));
      CUDA_CHECK(cudaEventSynchronize(end));
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, begin, end));
      best_ms = std::min(best_ms, static_cast<double>(ms));
    }
  } catch (...) {
    release();
    throw;
  }
  release();
  return 2.0 * static_cast<double>(bytes) / best_ms / 1e6;
}

}  // namespace
#endif

MachineEntries describe_gpu(int local_rank) {
  MachineEntries entries;
#if MLA_HAVE_CUDA
  const int devices = cuda_device_count();
  if (devices == 0) return entries;
  const int device = local_rank % devices;
  cudaDeviceProp properties{};
  CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  int sm_clock_khz = 0, memory_clock_khz = 0, runtime = 0, driver = 0, nccl = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_clock_khz, cudaDevAttrClockRate, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device));
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  if (ncclGetVersion(&nccl) != ncclSuccess) nccl = 0;
  entries.emplace_back("gpu_name", properties.name);
  entries.emplace_back("gpu_count", std::to_string(devices));
  entries.emplace_back("gpu_memory_bytes", std::to_string(properties.totalGlobalMem));
  entries.emplace_back("gpu_sm_clock_mhz", std::to_string(sm_clock_khz / 1000));
  entries.emplace_back("gpu_memory_clock_mhz", std::to_string(memory_clock_khz / 1000));
  entries.emplace_back("cuda_runtime", std::to_string(runtime));
  entries.emplace_back("cuda_driver", std::to_string(driver));
  entries.emplace_back("nccl", std::to_string(nccl));
  int current = 0;
  CUDA_CHECK(cudaGetDevice(&current));
  CUDA_CHECK(cudaSetDevice(device));
  entries.emplace_back("gpu_copy_gbps", significant(measure_device_copy_gbps()));
  CUDA_CHECK(cudaSetDevice(current));
#else
  (void)local_rank;
#endif
  return entries;
}

ResultRow& ResultRow::add(const std::string& column, std::string value) {
  cells_.emplace_back(column, std::move(value));
  return *this;
}

std::string significant(double value, int digits) {
  if (!std::isfinite(value)) return "";
  std::ostringstream out;
  out.precision(digits);
  out << value;
  return out.str();
}

std::string fixed(double value, int decimals) {
  if (!std::isfinite(value)) return "";
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

namespace {

// A cell as CSV needs it: quoted (quotes doubled) when it holds a comma, a quote or a line break.
std::string csv_cell(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// The cells of one CSV line (quoted cells unquoted).
std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      cells.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      cells.emplace_back();
    } else {
      cells.back() += c;
    }
  }
  return cells;
}

}  // namespace

ResultFile::ResultFile(std::string path, std::vector<std::string> columns, bool is_csv)
    : path_(std::move(path)), columns_(std::move(columns)), is_csv_(is_csv) {}

ResultFile ResultFile::csv(std::string path, std::vector<std::string> columns) {
  return ResultFile(std::move(path), std::move(columns), true);
}

ResultFile ResultFile::jsonl(std::string path) { return ResultFile(std::move(path), {}, false); }

std::string ResultFile::header() const {
  std::string text;
  for (const std::string& column : columns_) text += (text.empty() ? "" : ",") + csv_cell(column);
  return text;
}

void ResultFile::keep_existing_rows() {
  std::ifstream in(path_);
  if (!in) return;
  std::string line;
  if (is_csv_ && std::getline(in, line) && line != header()) {
    throw UserError(path_ + ": --append: its header is not this benchmark's (" + line.substr(0, 80) +
                    "...); write to another file");
  }
  while (std::getline(in, line)) {
    if (!line.empty()) lines_.push_back(line);
  }
}

std::set<std::string> ResultFile::existing_values(const std::string& column) const {
  std::set<std::string> values;
  const auto position = std::find(columns_.begin(), columns_.end(), column);
  std::ifstream in(path_);
  std::string line;
  if (position == columns_.end() || !in || !std::getline(in, line) || line != header()) return values;
  const size_t index = static_cast<size_t>(position - columns_.begin());
  while (std::getline(in, line)) {
    const std::vector<std::string> cells = split_csv_line(line);
    if (index < cells.size()) values.insert(cells[index]);
  }
  return values;
}

void ResultFile::add(const ResultRow& row) {
  if (!is_csv_) throw std::logic_error("ResultFile::add on a JSONL file: " + path_);
  const auto& cells = row.cells();
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i >= columns_.size() || cells[i].first != columns_[i]) {
      throw std::logic_error(path_ + ": row cell " + std::to_string(i) + " is '" + cells[i].first +
                             "', the header says '" + (i < columns_.size() ? columns_[i] : std::string("(none)")) +
                             "'");
    }
    line += (i == 0 ? "" : ",") + csv_cell(cells[i].second);
  }
  if (cells.size() != columns_.size()) {
    throw std::logic_error(path_ + ": a row of " + std::to_string(cells.size()) + " cells for " +
                           std::to_string(columns_.size()) + " columns");
  }
  lines_.push_back(std::move(line));
}

void ResultFile::add_line(std::string line) {
  if (is_csv_) throw std::logic_error("ResultFile::add_line on a CSV file: " + path_);
  lines_.push_back(std::move(line));
}

void ResultFile::write() const {
  std::string text = is_csv_ ? header() + "\n" : "";
  for (const std::string& line : lines_) text += line + "\n";
  write_file_atomically(path_, text);
}

}  // namespace mla
