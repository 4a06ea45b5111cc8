// The name of the machine a process runs on, for messages and temporary file names.
#pragma once

#include <string>

namespace mla {

// gethostname(), or "unknown-host".
std::string this_host_name();

}  // namespace mla
