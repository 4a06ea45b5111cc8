// Ends this process when it stops making progress, so that no rank of a job waits forever
// (parallel.timeout_s). The run reports progress at every step and around every collective; a
// thread checks the time since the last report.
//
// A rank stuck in its own work reports after timeout_s and names itself; a rank waiting in a
// collective for a peer allows a grace period more, so the stalled peer's own report comes first.
// Either way the process prints one error line and exits with kRankFailureExitCode, and mpirun
// ends the other ranks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace mla {

inline constexpr int kRankFailureExitCode = 3;

class Watchdog {
 public:
  // program: the command its messages start with ("mla_run"); label: "rank 2 (node-b)".
  // timeout_s <= 0 disables the watchdog.
  Watchdog(double timeout_s, std::string program, std::string label);
  // Once the config is read: parallel.timeout_s replaces the start-up default.
  void set_timeout(double timeout_s);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // "step 3": what the rank is doing now; resets the clock.
  void progress(const std::string& activity);
  void enter_collective(const std::string& what);  // resets the clock, grants the grace period
  void leave_collective();

  static constexpr double kCollectiveGraceSeconds = 2.0;
  static constexpr double kDefaultTimeoutSeconds = 300.0;

 private:
  void watch();

  double timeout_s_;
  const std::string program_;
  const std::string label_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string activity_ = "starting";
  std::string collective_;  // empty when not in a collective
  std::chrono::steady_clock::time_point last_progress_ = std::chrono::steady_clock::now();
  std::thread thread_;
};

}  // namespace mla
