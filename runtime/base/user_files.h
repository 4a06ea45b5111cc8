// The files a user names on the command line or in a config: text files read with a size limit,
// and outputs checked before any work so that no run replaces what it must not.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mla {

// Configs and sweeps are a few KB; a file past this is refused before it is read, so that a
// wrong path (/dev/zero, a checkpoint) cannot make the reader allocate without end.
inline constexpr uint64_t kMaxConfigFileBytes = uint64_t{4} << 20;

// The whole text of a regular file of at most max_bytes. Throws UserError "<path>: ..." naming
// `what` ("config file") when it cannot be opened, is not a regular file (a FIFO, a device, a
// directory) or is larger. Opening never blocks (a FIFO is refused, not waited on).
std::string read_text_file(const std::string& path, const std::string& what, uint64_t max_bytes);

// A file a run reads or writes, with the key or option that names it ("run.output", "--csv").
struct NamedPath {
  std::string key;
  std::string path;
};

// Before any work, refuses (UserError naming the key and both paths) every output that:
// - exists and is not a regular file after following symbolic links (a FIFO, a device node such
//   as /dev/null, a directory, a socket), or is a symbolic link to nothing;
// - is the same file (device and inode, so also through symbolic and hard links) as one of
//   `inputs` or as another output, or the same path as another output not yet created;
// - lies below something that exists and is not a directory, or cannot be created there.
// Outputs with an empty path are not written and are skipped; so are inputs with an empty path.
// Directories missing above an output are created (the returned lines say which, for the log),
// and temporaries left there by killed writers of the same output are removed (also logged).
std::vector<std::string> check_output_paths(const std::vector<NamedPath>& outputs,
                                            const std::vector<NamedPath>& inputs);

}  // namespace mla
