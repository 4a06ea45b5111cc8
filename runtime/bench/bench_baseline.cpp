#include "runtime/bench/bench_baseline.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/base/errors.h"

extern char** environ;

namespace mla {

namespace {

[[noreturn]] void fail(const std::string& python, const std::string& problem) {
  throw UserError("bench.baseline (" + python + " launch/torch_mla_baseline.py): " + problem);
}

}  // namespace

TorchBaseline::TorchBaseline(const std::string& python, const std::string& script, double timeout_s) : python_(python) {
  int to_child[2] = {-1, -1};
  int from_child[2] = {-1, -1};
  if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0) {
    fail(python, std::string("cannot create pipes: ") + std::strerror(errno));
  }
  // posix_spawn rather than fork: an MPI process should not duplicate itself (Open MPI warns, and
  // a forked copy of its network state is undefined).
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_child[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, from_child[1], STDOUT_FILENO);
  std::vector<std::string> args = {python, script, "--serve"};
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const int spawned = ::posix_spawnp(&pid_, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(to_child[0]);
  ::close(from_child[1]);
  to_worker_ = to_child[1];
  from_worker_ = from_child[0];
  if (spawned != 0) {
    pid_ = -1;
    stop();
    fail(python, std::string("cannot start: ") + std::strerror(spawned));
  }
  // A worker that dies makes our writes fail with EPIPE instead of killing us with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  std::string line;
  try {
    line = read_line(timeout_s);
    greeting_ = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception&) {
    stop();
    fail(python, "its greeting is not JSON: " + line.substr(0, 200));
  } catch (const UserError&) {
    stop();
    throw;
  }
  if (!greeting_.is_object() || !greeting_.value("ok", false)) {
    stop();
    fail(python, "did not start: " + line.substr(0, 300));
  }
}

TorchBaseline::~TorchBaseline() { stop(); }

void TorchBaseline::stop() {
  if (to_worker_ >= 0) ::close(std::exchange(to_worker_, -1));  // EOF: the worker exits
  if (from_worker_ >= 0) ::close(std::exchange(from_worker_, -1));
  if (pid_ <= 0) return;
  for (int waited_ms = 0; waited_ms < 5000; waited_ms += 10) {
    if (::waitpid(pid_, nullptr, WNOHANG) != 0) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string TorchBaseline::read_line(double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    const size_t newline = pending_.find('\n');
    if (newline != std::string::npos) {
      std::string line = pending_.substr(0, newline);
      pending_.erase(0, newline + 1);
      return line;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      stop();
      fail(python_, "no answer within " + std::to_string(static_cast<int>(timeout_s)) + " s; the worker was stopped");
    }
    pollfd ready{from_worker_, POLLIN, 0};
    const int polled = ::poll(&ready, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (polled < 0 && errno != EINTR) fail(python_, std::string("poll failed: ") + std::strerror(errno));
    if (polled <= 0) continue;
    char buffer[65536];
    const ssize_t got = ::read(from_worker_, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      stop();
      fail(python_, "the worker exited (see its messages above on stderr)");
    }
    pending_.append(buffer, static_cast<size_t>(got));
  }
}

nlohmann::json TorchBaseline::request(const nlohmann::json& request, double timeout_s) {
  if (to_worker_ < 0) fail(python_, "the worker is not running");
  const std::string line = request.dump() + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t wrote = ::write(to_worker_, line.data() + sent, line.size() - sent);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote < 0) {
      stop();
      fail(python_, std::string("cannot send a request: ") + std::strerror(errno));
    }
    sent += static_cast<size_t>(wrote);
  }
  const std::string answer = read_line(timeout_s);
  try {
    return nlohmann::json::parse(answer);
  } catch (const nlohmann::json::exception&) {
    stop();
    fail(python_, "answered something that is not JSON: " + answer.substr(0, 200));
  }
}

}  // namespace mla
