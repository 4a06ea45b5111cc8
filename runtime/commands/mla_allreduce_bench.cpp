// mla_allreduce_bench [--transport mpi|nccl] [--min-bytes 8] [--max-bytes 268435456] [--step-factor 2]
//                     [--warmup 5] [--iters 20] [--max-seconds-per-size 1.0] [--dtype float]
//                     [--csv FILE] [--check 1] [--timeout-s 120]
//
// What the layer's one collective (docs/design.md step 9: the sum of the ranks' partial outputs) costs at
// each message size, reported the way nccl-tests' all_reduce_perf reports it: per size one row per
// transport with time, algbw, busbw and #wrong, in place and out of place.
//
// Transports: `mpi` is our MpiCommunicator (reduce to rank 0, then broadcast, so that every rank
// holds the same bits), `mpi-raw` is plain MPI_Allreduce on the same buffers: the difference is what
// bitwise-identical results cost. `nccl` (CUDA builds) is ncclAllReduce on device buffers.
//
// Exit codes: 0 done and every element right; 1 wrong elements or an internal error; 2 bad flags;
// 3 a rank stalled (watchdog, --timeout-s); 77 --transport nccl where a rank sees no CUDA device.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_session.h"
#include "parallel/rank_agreement.h"
#include "parallel/watchdog.h"
#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/base/user_files.h"
#include "runtime/bench/harness.h"
#include "runtime/bench/machine_info.h"

#if MLA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_buffer.h"
#include "parallel/nccl_bootstrap.h"
#include "parallel/nccl_communicator.h"
#endif

namespace mla {
namespace {

constexpr int kWrongResultExitCode = 1;

struct Options {
  std::string transport = "mpi";
  int64_t min_bytes = 8;
  int64_t max_bytes = int64_t{256} << 20;
  int64_t step_factor = 2;
  int warmup = 5;
  int iters = 20;
  double max_seconds_per_size = 1.0;
  std::string dtype = "float";
  std::string csv;
  int check = 1;
  double timeout_s = 120.0;
};

// A rank that cannot run the asked transport here (no CUDA device): the job is skipped, not failed.
class Skipped : public std::runtime_error {
 public:
  explicit Skipped(const std::string& message) : std::runtime_error(message) {}
};

// ---- the data: exact sums ----------------------------------------------------------------------

// Rank r's value at element i is a small integer in [-8, 8] that depends on r and i. Every partial
// sum is then an integer of magnitude <= 8 * world, which float holds exactly (world < 2^20), so
// the sum is exact in any reduction order: a difference from the expected value is a wrong element,
// never rounding. The values repeat with period 17 in i, so both tables below are 17 entries long.
constexpr int kPeriod = 17;

std::vector<float> rank_values(int rank) {
  std::vector<float> values(kPeriod);
  for (int k = 0; k < kPeriod; ++k) values[k] = static_cast<float>((k + 3 * (rank % kPeriod)) % kPeriod - 8);
  return values;
}

std::vector<double> expected_sums(int world) {
  std::vector<double> sums(kPeriod, 0.0);
  for (int rank = 0; rank < world; ++rank) {
    const std::vector<float> values = rank_values(rank);
    for (int k = 0; k < kPeriod; ++k) sums[k] += values[k];
  }
  return sums;
}

void fill_input(float* input, int64_t count, int rank) {
  const std::vector<float> values = rank_values(rank);
  for (int64_t i = 0; i < count; ++i) input[i] = values[static_cast<size_t>(i % kPeriod)];
}

struct CheckResult {
  int64_t wrong = 0;
  double max_abs_error = 0.0;
};

CheckResult check_sums(const float* result, int64_t count, const std::vector<double>& expected) {
  CheckResult check;
  for (int64_t i = 0; i < count; ++i) {
    const double want = expected[static_cast<size_t>(i % kPeriod)];
    if (static_cast<double>(result[i]) == want) continue;
    ++check.wrong;
    const double error = std::fabs(static_cast<double>(result[i]) - want);
    check.max_abs_error = std::max(check.max_abs_error, std::isnan(error) ? INFINITY : error);
  }
  return check;
}

// ---- transports --------------------------------------------------------------------------------

// One way of summing across ranks, as the driver sees it. In place, `input` holds the input and
// then the sum; out of place, the sum goes to a second buffer and the input is kept.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  // Host memory for `count` input values; commit_input() makes them this rank's input.
  virtual float* host_input() = 0;
  virtual void commit_input(int64_t /*count*/) {}
  // One all-reduce of `count` floats; returns once this rank holds the sum.
  virtual void all_reduce(int64_t count, bool in_place) = 0;
  // The sum the last all_reduce left, in host memory.
  virtual const float* host_result(int64_t count, bool in_place) = 0;
};

// Both MPI transports share one pair of host buffers, allocated once at the largest size.
struct HostBuffers {
  std::vector<float> input;   // in place: input, then the sum
  std::vector<float> output;  // out of place: the sum
};

class HostTransport : public Transport {
 public:
  explicit HostTransport(HostBuffers& buffers) : buffers_(buffers) {}
  float* host_input() override { return buffers_.input.data(); }
  const float* host_result(int64_t /*count*/, bool in_place) override { return sum_buffer(in_place); }

 protected:
  float* sum_buffer(bool in_place) { return in_place ? buffers_.input.data() : buffers_.output.data(); }

 private:
  HostBuffers& buffers_;
};

class MpiOursTransport final : public HostTransport {
 public:
  MpiOursTransport(const MpiSession& session, HostBuffers& buffers) : HostTransport(buffers), comm_(session) {}
  const char* name() const override { return "mpi"; }
  // Our communicator sums in place only: out of place copies the input into the output buffer
  // first, and that copy is timed as part of the call, as a caller would pay it.
  void all_reduce(int64_t count, bool in_place) override {
    float* values = sum_buffer(in_place);
    if (!in_place) std::memcpy(values, host_input(), static_cast<size_t>(count) * sizeof(float));
    comm_.allreduce_sum(values, count);
  }

 private:
  MpiCommunicator comm_;
};

class MpiRawTransport final : public HostTransport {
 public:
  MpiRawTransport(const MpiSession& session, HostBuffers& buffers) : HostTransport(buffers), session_(session) {}
  const char* name() const override { return "mpi-raw"; }
  void all_reduce(int64_t count, bool in_place) override {
    // The same watchdog scope as MpiCommunicator's, so both rows carry the same bookkeeping.
    const CollectiveScope scope(session_.watchdog(), "all-reduce");
    MPI_CHECK(MPI_Allreduce(in_place ? MPI_IN_PLACE : host_input(), sum_buffer(in_place), static_cast<int>(count),
                            MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
  }

 private:
  const MpiSession& session_;
};

#if MLA_HAVE_CUDA
// One GPU per rank (local rank on the node's devices), device buffers at the largest size, a
// blocking NCCL communicator; a stalled peer is caught by the watchdog, not by NCCL.
class NcclTransport final : public Transport {
 public:
  NcclTransport(const MpiSession& session, int64_t max_count)
      : host_(static_cast<size_t>(max_count)), input_(max_count), output_(max_count) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const ncclUniqueId id = share_nccl_unique_id(session);
    const CollectiveScope scope(session.watchdog(), "NCCL start-up");
    NCCL_CHECK(ncclCommInitRank(&comm_, session.world(), id, session.rank()));
  }
  ~NcclTransport() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  NcclTransport(const NcclTransport&) = delete;
  NcclTransport& operator=(const NcclTransport&) = delete;

  const char* name() const override { return "nccl"; }
  float* host_input() override { return host_.data(); }
  void commit_input(int64_t count) override {
    input_.upload(host_.data(), count, stream_);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Timed on the host up to the stream's completion: the time until the sum is usable, launch
  // included, as the layer waits for it (CUDA events would leave the launch out).
  void all_reduce(int64_t count, bool in_place) override {
    NCCL_CHECK(ncclAllReduce(input_.data(), in_place ? input_.data() : output_.data(), static_cast<size_t>(count),
                             ncclFloat32, ncclSum, comm_, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  const float* host_result(int64_t count, bool in_place) override {
    CUDA_CHECK(cudaMemcpy(host_.data(), in_place ? input_.data() : output_.data(),
                          static_cast<size_t>(count) * sizeof(float), cudaMemcpyDeviceToHost));
    return host_.data();
  }

 private:
  std::vector<float> host_;
  DeviceBuffer<float> input_;
  DeviceBuffer<float> output_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

// Every rank needs its own GPU: none anywhere skips the job (exit 77); too few is a user error.
void select_device(const MpiSession& session) {
  const int devices = cuda_device_count();
  std::string failure;
  if (!session.all_ok(devices > 0, "no CUDA device is visible (--transport nccl needs one GPU per rank)", &failure)) {
    throw Skipped(failure);
  }
  const bool enough = session.local_size() <= devices;
  if (!session.all_ok(enough,
                      std::to_string(session.local_size()) + " ranks on this node share " + std::to_string(devices) +
                          " CUDA devices: --transport nccl needs one GPU per rank",
                      &failure)) {
    throw UserError(failure);
  }
  CUDA_CHECK(cudaSetDevice(session.local_rank()));
}
#endif

// ---- measuring ---------------------------------------------------------------------------------

void barrier(const MpiSession& session) {
  const CollectiveScope scope(session.watchdog(), "barrier");
  MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
}

// Collective: the element-wise maximum (or sum) of `values` over ranks, on every rank.
void agree(const MpiSession& session, double* values, int count, MPI_Op op) {
  const CollectiveScope scope(session.watchdog(), "agreement");
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, op, MPI_COMM_WORLD));
}

// Time is per call, with a barrier before each: the per-call times give a median, which a shared
// or oversubscribed machine's preemptions do not move (a batch average would carry them), and the
// barrier keeps a rank's late arrival from the previous call from being charged to the next. The
// cost: small sizes include the barrier's exit skew and never overlap two calls, so they read a
// little slower than a back-to-back batch.
double timed_call_us(Transport& transport, const MpiSession& session, int64_t count, bool in_place) {
  barrier(session);
  const auto start = std::chrono::steady_clock::now();
  transport.all_reduce(count, in_place);
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
}

struct Measurement {
  std::string transport;
  int64_t count = 0;
  bool in_place = true;
  int reps = 0;
  TimeSummary time_us;  // over timed calls, each the slowest rank's time
  bool checked = false;
  int64_t wrong = 0;  // over all ranks
  double max_abs_error = 0;
};

// Counts every element that differs from the exact sum, over all ranks (every rank learns it).
void check_result(Transport& transport, const MpiSession& session, int64_t count, bool in_place,
                  const std::vector<double>& expected, Measurement& m) {
  const CheckResult check = check_sums(transport.host_result(count, in_place), count, expected);
  double wrong = static_cast<double>(check.wrong);  // exact up to 2^53 elements
  double max_abs_error = check.max_abs_error;
  agree(session, &wrong, 1, MPI_SUM);
  agree(session, &max_abs_error, 1, MPI_MAX);
  m.checked = true;
  m.wrong = static_cast<int64_t>(wrong);
  m.max_abs_error = max_abs_error;
}

// One point: fill; one call, checked (--check 1) and timed, which is the first warm-up; the other
// warm-ups, in at most half of `budget_s` as the first call's time predicts; then as many timed
// calls as the rest of the budget holds at the fastest warm-up's pace, between 1 and --iters. The
// first call of a size is often the slowest (a loaded machine, a protocol switch in MPI): sizing
// the timed loop from it alone would cut it short. Every count here comes from values agreed over
// the ranks (their maximum), so all ranks make the same calls.
//
// In place, the sum grows by a factor `world` with each further call (to inf after many calls,
// never NaN: every rank holds the same value), which does not change the work; only the first
// call's result is checked.
Measurement measure(Transport& transport, const MpiSession& session, const Options& options, int64_t count,
                    bool in_place, double budget_s, const std::vector<double>& expected) {
  Measurement m;
  m.transport = transport.name();
  m.count = count;
  m.in_place = in_place;
  fill_input(transport.host_input(), count, session.rank());
  transport.commit_input(count);
  double first_us = timed_call_us(transport, session, count, in_place);
  if (options.check) check_result(transport, session, count, in_place, expected, m);
  agree(session, &first_us, 1, MPI_MAX);
  const int warmups =
      static_cast<int>(std::min<double>(std::max(0, options.warmup - 1), 0.5 * budget_s / (first_us * 1e-6)));
  double pace_us[2] = {first_us, first_us};  // the fastest call, the time spent
  for (int i = 0; i < warmups; ++i) {
    const double time_us = timed_call_us(transport, session, count, in_place);
    pace_us[0] = std::min(pace_us[0], time_us);
    pace_us[1] += time_us;
  }
  agree(session, pace_us, 2, MPI_MAX);
  const RepBudget budget{0, 1, options.iters, budget_s};
  const int reps = static_cast<int>(budget.reps_that_fit(pace_us[1] * 1e-6, pace_us[0] * 1e-6));
  std::vector<double> times_us(static_cast<size_t>(reps));
  for (double& time_us : times_us) time_us = timed_call_us(transport, session, count, in_place);
  // A call is over when its slowest rank has the sum: the maximum over ranks, call by call.
  agree(session, times_us.data(), reps, MPI_MAX);
  m.reps = reps;
  m.time_us = summarize_times(std::move(times_us));
  return m;
}

// ---- reporting ---------------------------------------------------------------------------------

// NaN for an in-place all-reduce at world 1, which moves no data: its time is that of a call that
// returns at once, and a rate computed from it would be meaningless (N/A in the table, empty in the CSV).
double algbw_gbps(const Measurement& m, int world) {
  if (world == 1 && m.in_place) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(m.count) * sizeof(float) / m.time_us.median / 1e3;
}

// Bus bandwidth, as nccl-tests defines it for all-reduce: a ring (or any bandwidth-optimal)
// all-reduce makes each rank send and receive 2(W-1)/W of the buffer, (W-1)/W in its
// reduce-scatter half and (W-1)/W in its all-gather half. Scaling algbw by that factor gives the
// rate at which each rank's link carries data, comparable with the link's peak whatever W is. It
// is a normalization, not a measurement of traffic: our reduce-then-broadcast scheme moves
// different volumes, and the same factor on every row keeps the rows comparable.
double busbw_gbps(const Measurement& m, int world) { return algbw_gbps(m, world) * 2.0 * (world - 1) / world; }

std::string table_cells(const Measurement& m, int world) {
  char text[96];
  const std::string wrong = m.checked ? std::to_string(m.wrong) : "N/A";
  const auto cell = [](double gbps) {
    const std::string rate = fixed(gbps, 3);
    return rate.empty() ? std::string("N/A") : rate;
  };
  std::snprintf(text, sizeof(text), " %10.2f %8s %8s %7s", m.time_us.median, cell(algbw_gbps(m, world)).c_str(),
                cell(busbw_gbps(m, world)).c_str(), wrong.c_str());
  return text;
}

void print_row(const Measurement& in_place, const Measurement& out_of_place, int world) {
  std::printf("%10s %12ld %12ld %s %s\n", in_place.transport.c_str(), static_cast<long>(in_place.count * 4),
              static_cast<long>(in_place.count), table_cells(in_place, world).c_str(),
              table_cells(out_of_place, world).c_str());
  std::fflush(stdout);
}

struct Machine {
  std::string host;  // rank 0's
  int nodes = 1;
  std::string ranks_per_node;  // "2", or "1-2" when nodes differ
  std::string hosts;           // "a (2 ranks), b (2 ranks)"
};

Machine describe_job(const MpiSession& session) {
  std::map<std::string, int> ranks_on;
  for (const std::string& host : session.all_gather(session.host())) ++ranks_on[host];
  Machine machine;
  machine.host = session.host();
  machine.nodes = static_cast<int>(ranks_on.size());
  int fewest = session.world(), most = 0;
  for (const auto& [host, ranks] : ranks_on) {
    machine.hosts += (machine.hosts.empty() ? "" : ", ") + host + " (" + std::to_string(ranks) + " ranks)";
    fewest = std::min(fewest, ranks);
    most = std::max(most, ranks);
  }
  machine.ranks_per_node = std::to_string(fewest) + (fewest == most ? "" : "-" + std::to_string(most));
  return machine;
}

void print_header(const MpiSession& session, const Options& options, const Machine& machine,
                  const std::vector<Transport*>& transports) {
  // The checkout this binary was built in (build/ lies inside it) names the commit.
  std::error_code error;
  const auto exe_dir = std::filesystem::read_symlink("/proc/self/exe", error).parent_path();
  MachineEntries entries = describe_machine(error ? std::string(".") : exe_dir.string());
  entries.emplace_back("mpi", mpi_library_version());
  if (options.transport == "nccl") {
    for (auto& entry : describe_gpu(session.local_rank())) entries.push_back(std::move(entry));
  }
  std::string names;
  for (const Transport* transport : transports) names += (names.empty() ? "" : ", ") + std::string(transport->name());
  std::printf(
      "# mla_allreduce_bench: all-reduce (sum) of %s; transports %s; world %d on %d node(s), %s ranks per node\n",
      options.dtype.c_str(), names.c_str(), session.world(), machine.nodes, machine.ranks_per_node.c_str());
  std::printf("# hosts: %s\n", machine.hosts.c_str());
  std::printf("# machine (rank 0): %s\n", machine_summary(entries).c_str());
  if (options.transport == "nccl") std::printf("# NCCL %s\n", machine_entry(entries, "nccl").c_str());
  std::printf(
      "# %s to %s (x%ld); per point the median of up to %d timed calls after up to %d warm-up(s), each call "
      "the slowest rank's time after a barrier; about %g s per size\n",
      format_bytes_binary(options.min_bytes).c_str(), format_bytes_binary(options.max_bytes).c_str(),
      static_cast<long>(options.step_factor), options.iters, std::max(1, options.warmup), options.max_seconds_per_size);
  if (options.transport == "mpi") {
    std::printf(
        "# mpi: MpiCommunicator (reduce to rank 0 + broadcast: identical bits on every rank; out of place "
        "includes copying the input to the output); mpi-raw: MPI_Allreduce\n");
  }
  std::printf("#%59s%40s\n", "in-place", "out-of-place");
  std::printf("%10s %12s %12s  %10s %8s %8s %7s  %10s %8s %8s %7s\n", "transport", "size", "count", "time", "algbw",
              "busbw", "#wrong", "time", "algbw", "busbw", "#wrong");
  std::printf("%10s %12s %12s  %10s %8s %8s %7s  %10s %8s %8s %7s\n", "", "(B)", "(elements)", "(us)", "(GB/s)",
              "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "");
  std::fflush(stdout);
}

// The CSV's columns, in the order of its header (kept: scripts read them by name and position).
const std::vector<std::string> kCsvColumns = {
    "transport",     "world", "bytes",  "count",  "dtype", "in_place", "reps", "time_us", "algbw_gbps",    "busbw_gbps",
    "max_abs_error", "ok",    "min_us", "max_us", "wrong", "checked",  "host", "nodes",   "ranks_per_node"};

ResultRow csv_row(const Measurement& m, const Options& options, int world, const Machine& machine) {
  ResultRow row;
  row.add("transport", m.transport)
      .add("world", std::to_string(world))
      .add("bytes", std::to_string(m.count * 4))
      .add("count", std::to_string(m.count))
      .add("dtype", options.dtype)
      .add("in_place", m.in_place ? "1" : "0")
      .add("reps", std::to_string(m.reps))
      .add("time_us", fixed(m.time_us.median, 3))
      .add("algbw_gbps", fixed(algbw_gbps(m, world), 6))
      .add("busbw_gbps", fixed(busbw_gbps(m, world), 6))
      .add("max_abs_error", m.checked ? fixed(m.max_abs_error, 6) : "nan")
      .add("ok", m.wrong == 0 ? "1" : "0")
      .add("min_us", fixed(m.time_us.min, 3))
      .add("max_us", fixed(m.time_us.max, 3))
      .add("wrong", std::to_string(m.wrong))
      .add("checked", m.checked ? "1" : "0")
      .add("host", machine.host)
      .add("nodes", std::to_string(machine.nodes))
      .add("ranks_per_node", machine.ranks_per_node);
  return row;
}

// ---- the run -----------------------------------------------------------------------------------

// Element counts from min to max bytes, multiplied by the factor; a size that is not a whole number
// of floats is rounded down to one (as nccl-tests does), and repeated counts are measured once.
std::vector<int64_t> element_counts(const Options& options) {
  std::vector<int64_t> counts;
  for (int64_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= options.step_factor) {
    const int64_t count = bytes / static_cast<int64_t>(sizeof(float));
    if (counts.empty() || counts.back() != count) counts.push_back(count);
  }
  return counts;
}

std::vector<std::unique_ptr<Transport>> make_transports(const MpiSession& session, const Options& options,
                                                        HostBuffers& buffers, Phases& phases) {
  const int64_t max_count = options.max_bytes / static_cast<int64_t>(sizeof(float));
  std::vector<std::unique_ptr<Transport>> transports;
  if (options.transport == "mpi") {
    phases.run([&] {
      try {
        buffers.input.assign(static_cast<size_t>(max_count), 0.0f);  // touched now, not in the first timed call
        buffers.output.assign(static_cast<size_t>(max_count), 0.0f);
      } catch (const std::bad_alloc&) {
        throw UserError("--max-bytes " + std::to_string(options.max_bytes) + ": cannot allocate two buffers of " +
                        format_bytes_binary(options.max_bytes) + " on this rank");
      }
    });
    transports.push_back(std::make_unique<MpiOursTransport>(session, buffers));
    transports.push_back(std::make_unique<MpiRawTransport>(session, buffers));
  }
#if MLA_HAVE_CUDA
  if (options.transport == "nccl") {
    select_device(session);
    transports.push_back(std::make_unique<NcclTransport>(session, max_count));
  }
#endif
  return transports;
}

int run(const MpiSession& session, const Options& options) {
  const bool leader = session.rank() == 0;
  Watchdog& watchdog = *session.watchdog();
  watchdog.set_timeout(options.timeout_s);
  Phases phases(session);
  phases.run([&] {
    if (!leader) return;
    for (const std::string& line : check_output_paths({{"--csv", options.csv}}, {})) {
      std::printf("# %s\n", line.c_str());
    }
  });
  HostBuffers buffers;
  watchdog.progress("allocating the buffers");
  const std::vector<std::unique_ptr<Transport>> transports = make_transports(session, options, buffers, phases);
  std::vector<Transport*> transport_list;
  for (const auto& transport : transports) transport_list.push_back(transport.get());
  const Machine machine = describe_job(session);
  if (leader) print_header(session, options, machine, transport_list);

  const std::vector<double> expected = expected_sums(session.world());
  const double budget_s = options.max_seconds_per_size / static_cast<double>(2 * transports.size());
  std::vector<Measurement> rows;
  int64_t wrong = 0;
  for (const int64_t count : element_counts(options)) {
    for (Transport* transport : transport_list) {
      watchdog.progress(std::string(transport->name()) + " all-reduce of " + std::to_string(count * 4) + " bytes");
      const Measurement in_place = measure(*transport, session, options, count, true, budget_s, expected);
      const Measurement out_of_place = measure(*transport, session, options, count, false, budget_s, expected);
      if (leader) print_row(in_place, out_of_place, session.world());
      wrong += in_place.wrong + out_of_place.wrong;
      rows.push_back(in_place);
      rows.push_back(out_of_place);
    }
  }
  watchdog.progress("writing the CSV");
  phases.run([&] {
    if (!leader || options.csv.empty()) return;
    ResultFile csv = ResultFile::csv(options.csv, kCsvColumns);
    for (const Measurement& m : rows) csv.add(csv_row(m, options, session.world(), machine));
    csv.write();
  });
  if (!leader) return wrong == 0 ? 0 : kWrongResultExitCode;
  if (!options.csv.empty()) std::printf("# csv: %s\n", options.csv.c_str());
  if (!options.check) std::printf("# results not checked (--check 0)\n");
  if (wrong == 0) return 0;
  std::fflush(stdout);
  std::fprintf(stderr, "mla_allreduce_bench: error: %ld wrong elements in all (see the #wrong columns)\n",
               static_cast<long>(wrong));
  return kWrongResultExitCode;
}

}  // namespace
}  // namespace mla

namespace {

// 2^29 floats: one MPI message of at most 2 GiB, the largest measured correct here (Open MPI's
// shared-memory and TCP paths count some sizes in bytes as int).
constexpr int64_t kMaxBytes = int64_t{1} << 31;

void add_options(CLI::App& app, mla::Options& options) {
  app.add_option("--transport", options.transport, "mpi (ours and MPI_Allreduce) or nccl (CUDA builds)")
      ->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_option("--min-bytes", options.min_bytes, "smallest message, bytes")->check(CLI::Range(int64_t{4}, kMaxBytes));
  app.add_option("--max-bytes", options.max_bytes, "largest message, bytes (each buffer is allocated at this size)")
      ->check(CLI::Range(int64_t{4}, kMaxBytes));
  app.add_option("--step-factor", options.step_factor, "each size is the previous one times this")
      ->check(CLI::Range(int64_t{2}, int64_t{1024}));
  app.add_option("--warmup", options.warmup, "warm-up calls per point (the first, checked call is one)")
      ->check(CLI::Range(0, 1000000));
  app.add_option("--iters", options.iters, "timed calls per point (fewer when --max-seconds-per-size says so)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--max-seconds-per-size", options.max_seconds_per_size,
                 "time for all the calls of one size, all transports and both placements")
      ->check(CLI::Range(1e-6, 3600.0));
  app.add_option("--dtype", options.dtype, "element type: float (float32)")->check(CLI::IsMember({"float"}));
  app.add_option("--csv", options.csv, "write one row per size, transport and placement here (atomically, at the end)");
  app.add_option("--check", options.check, "1: check every element of each point's first call; 0: do not")
      ->check(CLI::IsMember({0, 1}));
  app.add_option("--timeout-s", options.timeout_s, "a rank making no progress for this long stops the job (0: never)")
      ->check(CLI::Range(0.0, 86400.0));
}

// Checks across flags, and what this build can do; "" when all is well.
std::string flag_error(const mla::Options& options) {
  if (options.min_bytes > options.max_bytes) {
    return "--min-bytes " + std::to_string(options.min_bytes) + " is larger than --max-bytes " +
           std::to_string(options.max_bytes);
  }
  if (options.transport == "nccl" && !MLA_HAVE_CUDA) {
    return "--transport nccl: this build has no CUDA backend (built without nvcc); use --transport mpi";
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  const bool leader = mla::launcher_rank() == "0";
  CLI::App app{"All-reduce (sum) bandwidth and correctness over message sizes, nccl-tests style."};
  app.option_defaults()->always_capture_default();
  app.footer(
      "Exit codes: 0 done, every element right; 1 wrong elements or an internal error; 2 bad input\n"
      "(an option, the CSV path); 3 a rank stalled (--timeout-s); 77 --transport nccl where a rank sees\n"
      "no CUDA device.");
  mla::Options options;
  add_options(app, options);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return leader ? app.exit(help) : 0;
  } catch (const CLI::ParseError& error) {
    const std::string message = mla::UserError::one_line(error.what());
    if (leader) std::fprintf(stderr, "mla_allreduce_bench: error: %s\n", message.c_str());
    return mla::kUserErrorExitCode;
  }
  if (const std::string error = flag_error(options); !error.empty()) {
    if (leader) std::fprintf(stderr, "mla_allreduce_bench: error: %s\n", error.c_str());
    return mla::kUserErrorExitCode;
  }
  return mla::run_mpi_command("mla_allreduce_bench", &argc, &argv, {options.timeout_s, "--timeout-s", ""},
                              [&](mla::MpiSession& session) {
                                session.watchdog()->set_before_exit(mla::remove_unfinished_temporaries);
                                try {
                                  return mla::run(session, options);
                                } catch (const mla::Skipped& skipped) {
                                  // Every rank learned it from the same agreement: rank 0 speaks for all of them.
                                  if (leader)
                                    std::fprintf(stderr, "mla_allreduce_bench: skipped: %s\n", skipped.what());
                                  return mla::kSkippedExitCode;
                                }
                              });
}
