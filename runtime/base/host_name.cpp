#include "runtime/base/host_name.h"

#include <unistd.h>

namespace mla {

std::string this_host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

}  // namespace mla
