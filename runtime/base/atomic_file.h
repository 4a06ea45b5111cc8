// Files that appear whole or not at all: written to a temporary file in the destination's
// directory, fsynced, then renamed over the destination. A run killed at any moment leaves either
// the old file or the new one (docs/reliability.md, atomic outputs), and at most a temporary file
// that the next writer of the same destination removes (remove_stale_temporaries).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mla {

class AtomicFile {
 public:
  // Creates the temporary "<destination>.mla-tmp.<host>.<pid>.<n>" beside the destination, and
  // the destination's missing directories. A destination that is a symbolic link is written
  // through it: its target is replaced and the link stays. Throws UserError naming the
  // destination when the file cannot be created.
  explicit AtomicFile(const std::string& destination);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();  // removes the temporary file unless commit() renamed it into place

  void write(const void* data, uint64_t size);
  void write(const std::string& text) { write(text.data(), text.size()); }
  // fsync and close: the temporary holds the whole new content; the destination is untouched.
  void finish();
  // finish() if not done, then the rename: from here the destination holds the new content.
  void commit();

  const std::string& destination() const { return destination_; }
  // The directories the constructor created, outermost first (for the log).
  const std::vector<std::string>& created_directories() const { return created_directories_; }

 private:
  std::string destination_;
  std::string path_;
  int fd_ = -1;
  bool finished_ = false;
  bool renamed_ = false;
  std::vector<std::string> created_directories_;
};

// The whole of `text` as the new content of `path`, atomically.
void write_file_atomically(const std::string& path, const std::string& text);

// Removes the temporary files of every AtomicFile of this process that is not committed. For a
// process about to end without unwinding (the watchdog's exit), so that a run that reports failure
// leaves nothing behind. Safe to call from any thread.
void remove_unfinished_temporaries();

// Removes the temporaries of `destination` left by writers that were killed: files named by
// AtomicFile's pattern whose host is this one and whose pid is no longer running. Returns one line
// per file removed, for the log.
std::vector<std::string> remove_stale_temporaries(const std::string& destination);

}  // namespace mla
