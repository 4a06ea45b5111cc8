// Ends this process when it stops making progress, so that no rank of a job waits forever
// (parallel.timeout_s). The run reports progress at every step and around every collective; a
// thread checks the time since the last report.
//
// A rank stuck in its own work reports after timeout_s and names itself; a rank waiting in a
// collective for a peer allows a grace period more, so the stalled peer's own report comes first.
// Either way the process prints one error line and exits with kRankFailureExitCode, and mpirun
// ends the other ranks.
//
// The end of a run is one step under the watchdog's lock (finish_run): the output's rename, and
// from then on a stall (MPI's shutdown, say) ends the rank with exit 0, since the run's result is
// complete. So a rank that reports failure has never replaced its output.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/base/errors.h"

namespace mla {

class Watchdog {
 public:
  // program: the command its messages start with ("mla_run"); label: "rank 2 (node-b)";
  // limit_name: the setting timeout_s comes from, for messages. timeout_s <= 0 disables the
  // watchdog. Until end_startup(), the limit is at least kMinStartupSeconds: a loaded machine can
  // take seconds in MPI_Init, and a peer stalled there must still be caught.
  Watchdog(double timeout_s, std::string program, std::string label, std::string limit_name = "parallel.timeout_s");
  void end_startup();
  // Once the config is read: parallel.timeout_s replaces the one read ahead for the start-up.
  void set_timeout(double timeout_s);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // "step 3": what the rank is doing now; resets the clock.
  void progress(const std::string& activity);
  void enter_collective(const std::string& what);  // resets the clock, grants the grace period
  void leave_collective();
  // debug.progress_file: from now on each progress report also rewrites `path` with one line,
  // "pid <pid>: <activity>", so that a test can act once this rank has reached a given state.
  void set_progress_file(const std::string& path);
  // Runs once before the process ends on a stall, on the watchdog's thread (removing temporary
  // files, say). Set it before anything it cleans up exists.
  void set_before_exit(std::function<void()> before_exit);
  // Runs `commit` (the output's rename) so that the watchdog cannot end the process during it,
  // then marks the run finished. Every rank calls it once every rank agreed the run succeeded.
  void finish_run(const std::function<void()>& commit);

  static constexpr double kCollectiveGraceSeconds = 2.0;
  static constexpr double kMinStartupSeconds = 10.0;
  static constexpr double kDefaultTimeoutSeconds = 300.0;

 private:
  void watch();
  void write_progress_file() const;  // with mutex_ held

  double timeout_s_;
  const std::string program_;
  const std::string label_;
  const std::string limit_name_;
  bool starting_up_ = true;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string activity_ = "starting";
  std::string collective_;  // empty when not in a collective
  bool run_finished_ = false;
  std::string progress_file_;
  std::function<void()> before_exit_;
  std::chrono::steady_clock::time_point last_progress_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

}  // namespace mla
