// NCCL's clique id travels over MPI: rank 0 makes it, every rank receives it.
#pragma once

#include <nccl.h>

#include "parallel/mpi_session.h"

namespace mla {

ncclUniqueId share_nccl_unique_id(const MpiSession& session);
// Collective over the job: the id of this rank's group of group_size consecutive ranks (the group's
// first rank makes it; every rank receives its own group's).
ncclUniqueId share_nccl_group_id(const MpiSession& session, int group_size);

}  // namespace mla
