#include "parallel/nccl_bootstrap.h"

#include <vector>

#include "parallel/nccl_communicator.h"

namespace mla {

ncclUniqueId share_nccl_unique_id(const MpiSession& session) {
  ncclUniqueId id{};
  if (session.rank() == 0) id = new_nccl_unique_id();
  CollectiveScope scope(session.watchdog(), "broadcast of the NCCL id");
  MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
  return id;
}

ncclUniqueId share_nccl_group_id(const MpiSession& session, int group_size) {
  ncclUniqueId mine{};
  if (session.rank() % group_size == 0) mine = new_nccl_unique_id();
  std::vector<ncclUniqueId> ids(static_cast<size_t>(session.world()));
  CollectiveScope scope(session.watchdog(), "gather of the context groups' NCCL ids");
  MPI_CHECK(MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, ids.data(), sizeof(mine), MPI_BYTE, MPI_COMM_WORLD));
  return ids[static_cast<size_t>(session.rank() / group_size * group_size)];
}

}  // namespace mla
