#include "parallel/watchdog.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace mla {

Watchdog::Watchdog(double timeout_s, std::string program, std::string label, std::string limit_name)
    : timeout_s_(timeout_s),
      program_(std::move(program)),
      label_(std::move(label)),
      limit_name_(std::move(limit_name)) {
  thread_ = std::thread([this] { watch(); });
}

void Watchdog::end_startup() {
  std::lock_guard<std::mutex> lock(mutex_);
  starting_up_ = false;
  last_progress_ = std::chrono::steady_clock::now();
}

void Watchdog::set_timeout(double timeout_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  timeout_s_ = timeout_s;
  last_progress_ = std::chrono::steady_clock::now();
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::progress(const std::string& activity) {
  std::lock_guard<std::mutex> lock(mutex_);
  activity_ = activity;
  last_progress_ = std::chrono::steady_clock::now();
  if (!progress_file_.empty()) write_progress_file();
}

void Watchdog::set_progress_file(const std::string& path) {
  std::lock_guard<std::mutex> lock(mutex_);
  progress_file_ = path;
  write_progress_file();
}

// Written in place (a reader polls it): a reader may see a short line, never another rank's.
void Watchdog::write_progress_file() const {
  const int fd = ::open(progress_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;  // a debug aid: the run goes on without it
  const std::string line = "pid " + std::to_string(::getpid()) + ": " + activity_ + "\n";
  const ssize_t written = ::write(fd, line.data(), line.size());
  static_cast<void>(written);
  ::close(fd);
}

void Watchdog::enter_collective(const std::string& what) {
  std::lock_guard<std::mutex> lock(mutex_);
  collective_ = what;
  last_progress_ = std::chrono::steady_clock::now();
}

void Watchdog::leave_collective() {
  std::lock_guard<std::mutex> lock(mutex_);
  collective_.clear();
  last_progress_ = std::chrono::steady_clock::now();
}

void Watchdog::set_before_exit(std::function<void()> before_exit) {
  std::lock_guard<std::mutex> lock(mutex_);
  before_exit_ = std::move(before_exit);
}

void Watchdog::finish_run(const std::function<void()>& commit) {
  std::lock_guard<std::mutex> lock(mutex_);
  commit();
  run_finished_ = true;
  last_progress_ = std::chrono::steady_clock::now();
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, std::chrono::milliseconds(50));
    if (stopping_) return;
    if (timeout_s_ <= 0) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_progress_).count();
    const double own_limit = starting_up_ ? std::max(timeout_s_, kMinStartupSeconds) : timeout_s_;
    const double limit = own_limit + (collective_.empty() ? 0.0 : kCollectiveGraceSeconds);
    if (waited < limit) continue;
    char setting[160];
    std::snprintf(setting, sizeof(setting), "%s %g%s", limit_name_.c_str(), timeout_s_,
                  starting_up_ && timeout_s_ < kMinStartupSeconds ? "; MPI's start-up gets at least 10 s" : "");
    if (run_finished_) {
      std::fprintf(stderr,
                   "%s: warning: %s: %s: no progress for %.1f s after the run finished (%s); "
                   "ending this rank without waiting (its result is complete)\n",
                   program_.c_str(), label_.c_str(), activity_.c_str(), waited, setting);
      std::fflush(stderr);
      std::_Exit(0);
    }
    if (collective_.empty()) {
      std::fprintf(stderr, "%s: error: %s: %s: stalled, no progress for %.1f s (%s)\n", program_.c_str(),
                   label_.c_str(), activity_.c_str(), waited, setting);
    } else {
      std::fprintf(stderr,
                   "%s: error: %s: %s: the %s has waited %.1f s for the other ranks (%s): a peer stalled or died\n",
                   program_.c_str(), label_.c_str(), activity_.c_str(), collective_.c_str(), waited, setting);
    }
    if (before_exit_) before_exit_();
    std::fflush(stderr);
    // No unwinding: the main thread may be blocked inside MPI. mpirun ends the other ranks.
    std::_Exit(kRankFailureExitCode);
  }
}

}  // namespace mla
