// Files that appear whole or not at all: written to a temporary file in the destination's
// directory, fsynced, then renamed over the destination. A run killed at any moment leaves either
// the old file or the new one (docs/reliability.md, atomic outputs).
#pragma once

#include <cstdint>
#include <string>

namespace mla {

class AtomicFile {
 public:
  // Creates "<destination>.tmp.<pid>.<n>". Throws UserError naming the destination when the
  // directory does not exist or the file cannot be created.
  explicit AtomicFile(const std::string& destination);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();  // removes the temporary file unless commit() renamed it into place

  void write(const void* data, uint64_t size);
  void write(const std::string& text) { write(text.data(), text.size()); }
  void commit();

 private:
  std::string destination_;
  std::string path_;
  int fd_ = -1;
  bool renamed_ = false;
};

// Throws UserError naming `path` when its directory does not exist.
void require_parent_directory(const std::string& path);

// The whole of `text` as the new content of `path`, atomically.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace mla
