// MPI bootstrap and the MPI communicator (CPU ranks).
//
// Every MPI call goes through MPI_CHECK: on failure it throws MpiError naming the call, the file
// and line, the rank and the host, with MPI's own error string.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"
#include "runtime/base/errors.h"

namespace mla {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

// Marks a collective for the session's watchdog (if any) for as long as it lives.
class CollectiveScope {
 public:
  CollectiveScope(Watchdog* watchdog, const char* what) : watchdog_(watchdog) {
    if (watchdog_ != nullptr) watchdog_->enter_collective(what);
  }
  ~CollectiveScope() {
    if (watchdog_ != nullptr) watchdog_->leave_collective();
  }
  CollectiveScope(const CollectiveScope&) = delete;
  CollectiveScope& operator=(const CollectiveScope&) = delete;

 private:
  Watchdog* watchdog_;
};

#define MPI_CHECK(call)                                                   \
  do {                                                                    \
    const int mpi_check_code_ = (call);                                   \
    if (mpi_check_code_ != MPI_SUCCESS) {                                 \
      ::mla::throw_mpi_error(mpi_check_code_, #call, __FILE__, __LINE__); \
    }                                                                     \
  } while (0)

// MPI_Init on construction, MPI_Finalize on destruction. Run without mpirun, it is a world of one.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Collectives of this session (all_ok, all_gather) report to the watchdog while they wait.
  void set_watchdog(Watchdog* watchdog) { watchdog_ = watchdog; }
  Watchdog* watchdog() const { return watchdog_; }

  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  int local_size() const { return local_size_; }  // processes of this job on this node
  const std::string& host() const { return host_; }
  std::string label() const;  // "[rank 1/4 node-a]"

  // Collective: true on every rank when `ok` is true on every rank. Otherwise `failure` (on every
  // rank) reads "rank R (HOST): message" for each failing rank, ranks with the same message
  // grouped, so one rank's bad file stops all of them with its reason instead of leaving them waiting.
  bool all_ok(bool ok, const std::string& message, std::string* failure) const;

  // Collective: every rank's string, in rank order, on every rank.
  std::vector<std::string> all_gather(const std::string& text) const;

 private:
  int rank_ = 0;
  int world_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string host_;
  Watchdog* watchdog_ = nullptr;
};

// The MPI library's name and version, its first line up to a comma ("Open MPI v4.1.4").
std::string mpi_library_version();

// This process's rank as its launcher's environment says (Open MPI, PMIx, PMI, Slurm), readable
// before MPI_Init for messages and for choosing which rank speaks; "0" when none is set.
std::string launcher_rank();

// A command's watchdog as it must be before MPI_Init (read ahead from its config or flags).
struct WatchdogSettings {
  double timeout_s = Watchdog::kDefaultTimeoutSeconds;
  std::string limit_name = "parallel.timeout_s";  // the setting timeout_s comes from, for messages
  // debug.progress_file: each rank R keeps "<progress_file>.rank<R>" (Watchdog::set_progress_file),
  // from before MPI_Init on. Empty: none.
  std::string progress_file;
};

// The frame of every MPI command (mla_run, mla_bench, mla_allreduce_bench): a watchdog started
// before MPI_Init (MPI's start-up is given at least Watchdog::kMinStartupSeconds; the body may
// change it through session.watchdog()), the session, and the body's exceptions turned into one
// message and an exit code. RankFailure and UserError reach every rank together (an all-reduce,
// Phases), so rank 0 speaks for all of them and the job exits kRankFailureExitCode or
// kUserErrorExitCode; any other exception only this rank knows of: it reports itself and calls
// MPI_Abort, so that no peer is left waiting.
int run_mpi_command(const char* program, int* argc, char*** argv, const WatchdogSettings& settings,
                    const std::function<int(MpiSession&)>& body);

// Sums partial outputs with MPI. MPI_Allreduce may round differently on different ranks, so the
// sum is reduced on rank 0 and broadcast: every rank ends with the same bits (docs/design.md step 9).
class MpiCommunicator final : public Communicator {
 public:
  // Every rank of the job.
  explicit MpiCommunicator(const MpiSession& session);
  // Collective over the job: the ranks [g * group_size, (g + 1) * group_size) of this rank's
  // group g (group_size must divide the world), ranked within it.
  MpiCommunicator(const MpiSession& session, int group_size);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string host() const override { return session_.host(); }
  void allreduce_sum(float* values, int64_t count) override;
  void allgather(const float* send, int64_t count, float* recv) override;
  void alltoall(const float* send, int64_t count, float* recv) override;

 private:
  const MpiSession& session_;
  MPI_Comm comm_ = MPI_COMM_WORLD;  // a group's own communicator, freed with this object
  int rank_ = 0;
  int world_ = 1;
};

}  // namespace mla
