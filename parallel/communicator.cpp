#include "parallel/communicator.h"

#include <unistd.h>

namespace mla {

std::string SingleProcessCommunicator::host() const {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

}  // namespace mla
