#include "parallel/watchdog.h"

#include <cstdio>
#include <cstdlib>

namespace mla {

Watchdog::Watchdog(double timeout_s, std::string program, std::string label)
    : timeout_s_(timeout_s), program_(std::move(program)), label_(std::move(label)) {
  thread_ = std::thread([this] { watch(); });
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

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, std::chrono::milliseconds(50));
    if (stopping_) return;
    if (timeout_s_ <= 0) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_progress_).count();
    const double limit = timeout_s_ + (collective_.empty() ? 0.0 : kCollectiveGraceSeconds);
    if (waited < limit) continue;
    if (collective_.empty()) {
      std::fprintf(stderr, "%s: error: %s: %s: stalled, no progress for %.1f s (parallel.timeout_s %g)\n",
                   program_.c_str(), label_.c_str(), activity_.c_str(), waited, timeout_s_);
    } else {
      std::fprintf(stderr,
                   "%s: error: %s: %s: the %s has waited %.1f s for the other ranks (parallel.timeout_s %g): "
                   "a peer stalled or died\n",
                   program_.c_str(), label_.c_str(), activity_.c_str(), collective_.c_str(), waited, timeout_s_);
    }
    std::fflush(stderr);
    // No unwinding: the main thread may be blocked inside MPI. mpirun ends the other ranks.
    std::_Exit(kRankFailureExitCode);
  }
}

}  // namespace mla
