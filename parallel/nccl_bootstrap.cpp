#include "parallel/nccl_bootstrap.h"

#include "parallel/nccl_communicator.h"

namespace mla {

ncclUniqueId share_nccl_unique_id(const MpiSession& session) {
  ncclUniqueId id{};
  if (session.rank() == 0) id = new_nccl_unique_id();
  CollectiveScope scope(session.watchdog(), "broadcast of the NCCL id");
  MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
  return id;
}

}  // namespace mla
