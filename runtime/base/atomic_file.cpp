#include "runtime/base/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <utility>

#include "runtime/base/errors.h"
#include "runtime/base/host_name.h"

namespace mla {

namespace fs = std::filesystem;

namespace {

// One write call moves at most this much; Linux caps a single transfer near 2 GiB anyway.
constexpr uint64_t kMaxTransferBytes = uint64_t{1} << 30;
constexpr char kTemporaryMarker[] = ".mla-tmp.";

// Call right after the failing system call. The arguments are built without allocating, so errno
// still holds that call's error when it is read here.
[[noreturn]] void fail_errno(const std::string& path, const char* action, const std::string& subject) {
  const int error = errno;
  throw UserError(path + ": " + action + " '" + subject + "': " + std::strerror(error));
}

// The temporaries of this process not yet renamed, for remove_unfinished_temporaries().
std::mutex& live_temporaries_mutex() {
  static std::mutex mutex;
  return mutex;
}
std::set<std::string>& live_temporaries() {
  static std::set<std::string> paths;
  return paths;
}

// Makes the rename itself durable; best effort, since the data is already safely in place.
void sync_parent_directory(const std::string& path) {
  fs::path directory = fs::path(path).parent_path();
  if (directory.empty()) directory = ".";
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// The file a write to `path` replaces: `path` itself, or the target of the symbolic link it is.
std::string resolve_destination(const std::string& path) {
  struct stat status {};
  if (::lstat(path.c_str(), &status) != 0 || !S_ISLNK(status.st_mode)) return path;
  std::error_code error;
  const fs::path target = fs::canonical(path, error);
  if (error) throw UserError(path + ": a symbolic link whose target cannot be resolved: " + error.message());
  return target.string();
}

// Creates the missing directories above `path`, outermost first; returns the ones it created.
std::vector<std::string> create_parent_directories(const std::string& path) {
  std::vector<fs::path> missing;
  std::error_code error;
  for (fs::path directory = fs::path(path).parent_path(); !directory.empty() && !fs::exists(directory, error);
       directory = directory.parent_path()) {
    missing.push_back(directory);
  }
  std::vector<std::string> created;
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (!fs::create_directory(*it, error) && error) {
      throw UserError(path + ": cannot create its directory '" + it->string() + "': " + error.message());
    }
    created.push_back(it->string());
  }
  fs::path directory = fs::path(path).parent_path();
  if (directory.empty()) directory = ".";
  if (!fs::is_directory(directory, error)) {
    throw UserError(path + ": '" + directory.string() + "' is not a directory");
  }
  return created;
}

}  // namespace

AtomicFile::AtomicFile(const std::string& destination) : destination_(resolve_destination(destination)) {
  static std::atomic<uint64_t> counter{0};
  created_directories_ = create_parent_directories(destination_);
  path_ = destination_ + kTemporaryMarker + this_host_name() + "." + std::to_string(::getpid()) + "." +
          std::to_string(counter++);
  std::lock_guard<std::mutex> lock(live_temporaries_mutex());
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_errno(destination_, "cannot create temporary file", path_);
  live_temporaries().insert(path_);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (renamed_) return;
  std::lock_guard<std::mutex> lock(live_temporaries_mutex());
  ::unlink(path_.c_str());
  live_temporaries().erase(path_);
}

void AtomicFile::write(const void* data, uint64_t size) {
  if (finished_) throw std::logic_error("AtomicFile::write after finish(): " + path_);
  const auto* cursor = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd_, cursor, std::min(size, kMaxTransferBytes));
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) fail_errno(destination_, "cannot write temporary file", path_);
    cursor += written;
    size -= static_cast<uint64_t>(written);
  }
}

// fsync before rename so that a crash leaves either the old file or the complete new one.
void AtomicFile::finish() {
  if (finished_) return;
  if (::fsync(fd_) != 0) fail_errno(destination_, "cannot fsync temporary file", path_);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail_errno(destination_, "cannot close temporary file", path_);
  finished_ = true;
}

void AtomicFile::commit() {
  finish();
  {
    // Under the lock, so that remove_unfinished_temporaries() sees the file either before the
    // rename (and removes it) or after (and leaves the destination alone).
    std::lock_guard<std::mutex> lock(live_temporaries_mutex());
    if (::rename(path_.c_str(), destination_.c_str()) != 0) {
      fail_errno(destination_, "cannot rename onto it the temporary file", path_);
    }
    renamed_ = true;
    live_temporaries().erase(path_);
  }
  sync_parent_directory(destination_);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile file(path);
  file.write(text);
  file.commit();
}

void remove_unfinished_temporaries() {
  std::lock_guard<std::mutex> lock(live_temporaries_mutex());
  for (const std::string& path : live_temporaries()) ::unlink(path.c_str());
  live_temporaries().clear();
}

std::vector<std::string> remove_stale_temporaries(const std::string& destination) {
  const std::string resolved = resolve_destination(destination);
  fs::path directory = fs::path(resolved).parent_path();
  if (directory.empty()) directory = ".";
  const std::string prefix = fs::path(resolved).filename().string() + kTemporaryMarker + this_host_name() + ".";
  std::vector<std::string> removed;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    // What follows the host: "<pid>.<n>", both decimal.
    const std::string rest = name.substr(prefix.size());
    const size_t dot = rest.find('.');
    const auto decimal = [](const std::string& text) {
      return !text.empty() && text.size() < 10 &&
             std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (dot == std::string::npos || !decimal(rest.substr(0, dot)) || !decimal(rest.substr(dot + 1))) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dot)));
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;  // still running, or not ours to judge
    if (!entry.is_regular_file(error) || entry.is_symlink(error)) continue;
    if (::unlink(entry.path().c_str()) == 0) {
      removed.push_back("removed " + entry.path().string() + ", a temporary file left by process " +
                        std::to_string(pid) + " of this host, which is no longer running");
    }
  }
  return removed;
}

}  // namespace mla
