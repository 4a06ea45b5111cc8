// NCCL's clique id travels over MPI: rank 0 makes it, every rank receives it.
#pragma once

#include <nccl.h>

#include "parallel/mpi_session.h"

namespace mla {

ncclUniqueId share_nccl_unique_id(const MpiSession& session);

}  // namespace mla
