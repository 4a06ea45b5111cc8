#include "runtime/base/user_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include "runtime/base/atomic_file.h"
#include "runtime/base/errors.h"

namespace mla {

namespace fs = std::filesystem;

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string quoted(const std::string& path) { return "'" + path + "'"; }

// An output as it stands before the run: its status when it exists (symbolic links followed),
// and the path it will have, for comparing outputs that do not exist yet.
struct OutputState {
  const NamedPath* named = nullptr;
  std::optional<struct stat> status;
  std::string resolved_path;
};

OutputState inspect_output(const NamedPath& output) {
  OutputState state;
  state.named = &output;
  struct stat link_status {};
  if (::lstat(output.path.c_str(), &link_status) != 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      throw UserError(output.key + ": " + quoted(output.path) + ": " + std::strerror(errno));
    }
  } else {
    struct stat status {};
    if (::stat(output.path.c_str(), &status) != 0) {
      throw UserError(output.key + ": " + quoted(output.path) + " is a symbolic link to a file that cannot be " +
                      "reached (" + std::strerror(errno) + "); give the file itself");
    }
    if (!S_ISREG(status.st_mode)) {
      throw UserError(output.key + ": " + quoted(output.path) + " exists and is " + file_kind(status.st_mode) +
                      "; an output must be a regular file, which the run replaces");
    }
    state.status = status;
  }
  std::error_code error;
  const fs::path resolved = fs::weakly_canonical(fs::absolute(output.path, error), error);
  state.resolved_path = error ? output.path : resolved.string();
  return state;
}

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

}  // namespace

std::string read_text_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw UserError(path + ": cannot open the " + what + ": " + std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat status {};
  if (::fstat(fd, &status) != 0) throw UserError(path + ": cannot stat the " + what + ": " + std::strerror(errno));
  if (!S_ISREG(status.st_mode)) throw UserError(path + ": the " + what + " is " + file_kind(status.st_mode));
  if (static_cast<uint64_t>(status.st_size) > max_bytes) {
    throw UserError(path + ": the " + what + " is " + std::to_string(status.st_size) + " bytes, more than the " +
                    std::to_string(max_bytes >> 20) + " MiB a " + what + " may have");
  }
  // Read to the end, but never past the limit: the file may grow while it is read.
  const size_t limit = static_cast<size_t>(max_bytes) + 1;
  std::string text(static_cast<size_t>(status.st_size) + 1, '\0');
  size_t length = 0;
  while (length < limit) {
    if (length == text.size()) text.resize(std::min(limit, 2 * text.size()));
    const ssize_t got = ::read(fd, text.data() + length, text.size() - length);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw UserError(path + ": cannot read the " + what + ": " + std::strerror(errno));
    if (got == 0) break;
    length += static_cast<size_t>(got);
  }
  if (length > max_bytes) {
    throw UserError(path + ": the " + what + " grew past " + std::to_string(max_bytes >> 20) +
                    " MiB while it was read");
  }
  text.resize(length);
  return text;
}

std::vector<std::string> check_output_paths(const std::vector<NamedPath>& outputs,
                                            const std::vector<NamedPath>& inputs) {
  std::vector<OutputState> states;
  for (const NamedPath& output : outputs) {
    if (!output.path.empty()) states.push_back(inspect_output(output));
  }
  for (const OutputState& state : states) {
    for (const NamedPath& input : inputs) {
      struct stat input_status {};
      if (input.path.empty() || !state.status || ::stat(input.path.c_str(), &input_status) != 0) continue;
      if (same_file(*state.status, input_status)) {
        throw UserError(state.named->key + ": " + quoted(state.named->path) + " is the same file as " + input.key +
                        " " + quoted(input.path) + ", which the run reads; write the output elsewhere");
      }
    }
  }
  for (size_t i = 0; i < states.size(); ++i) {
    for (size_t j = i + 1; j < states.size(); ++j) {
      const bool same = states[i].status && states[j].status ? same_file(*states[i].status, *states[j].status)
                                                             : states[i].resolved_path == states[j].resolved_path;
      if (same) {
        throw UserError(states[j].named->key + ": " + quoted(states[j].named->path) + " is the same file as " +
                        states[i].named->key + " " + quoted(states[i].named->path) +
                        "; each output needs its own file");
      }
    }
  }
  std::vector<std::string> log;
  for (const OutputState& state : states) {
    try {
      // Creates the missing directories, and a temporary that is removed again: the run can write here.
      const AtomicFile probe(state.named->path);
      for (const std::string& directory : probe.created_directories()) {
        log.push_back("created directory " + directory + " for " + state.named->key);
      }
      for (std::string& line : remove_stale_temporaries(state.named->path)) log.push_back(std::move(line));
    } catch (const UserError& error) {
      throw UserError(state.named->key + ": " + error.what());
    }
  }
  return log;
}

}  // namespace mla
