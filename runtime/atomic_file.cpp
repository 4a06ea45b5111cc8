#include "runtime/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "runtime/errors.h"

namespace mla {

namespace {

// One write call moves at most this much; Linux caps a single transfer near 2 GiB anyway.
constexpr uint64_t kMaxTransferBytes = uint64_t{1} << 30;

// Call right after the failing system call. The arguments are built without allocating, so errno
// still holds that call's error when it is read here.
[[noreturn]] void fail_errno(const std::string& path, const char* action, const std::string& subject) {
  const int error = errno;
  throw UserError(path + ": " + action + " '" + subject + "': " + std::strerror(error));
}

// Makes the rename itself durable; best effort, since the data is already safely in place.
void sync_parent_directory(const std::string& path) {
  std::filesystem::path directory = std::filesystem::path(path).parent_path();
  if (directory.empty()) directory = ".";
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void require_parent_directory(const std::string& path) {
  std::filesystem::path directory = std::filesystem::path(path).parent_path();
  if (directory.empty()) directory = ".";
  std::error_code error;
  if (!std::filesystem::is_directory(directory, error)) {
    throw UserError(path + ": directory '" + directory.string() + "' does not exist");
  }
}

AtomicFile::AtomicFile(const std::string& destination) : destination_(destination) {
  static std::atomic<uint64_t> counter{0};
  require_parent_directory(destination);
  path_ = destination + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_errno(destination_, "cannot create temporary file", path_);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!renamed_) ::unlink(path_.c_str());
}

void AtomicFile::write(const void* data, uint64_t size) {
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
void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail_errno(destination_, "cannot fsync temporary file", path_);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail_errno(destination_, "cannot close temporary file", path_);
  if (::rename(path_.c_str(), destination_.c_str()) != 0) {
    fail_errno(destination_, "cannot rename onto it the temporary file", path_);
  }
  renamed_ = true;
  sync_parent_directory(destination_);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile file(path);
  file.write(text);
  file.commit();
}

}  // namespace mla
