#include "parallel/communicator.h"

namespace mla {

std::string SingleProcessCommunicator::host() const { return this_host_name(); }

}  // namespace mla
