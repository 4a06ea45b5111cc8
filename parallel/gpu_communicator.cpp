#include "parallel/gpu_communicator.h"

#include "kernels/cuda/cuda_check.h"
#include "parallel/nccl_bootstrap.h"
#include "parallel/nccl_communicator.h"
#include "runtime/base/errors.h"

namespace mla {

namespace {

// Whether NCCL serves: asked for (refused, naming the key, where ranks share a GPU), or auto and
// every rank has a GPU of its own. `why` says which.
bool uses_nccl(CommunicatorChoice choice, const MpiSession& session, std::string& why) {
  const int devices = cuda_device_count();
  const bool own_gpu = session.local_size() <= devices;
  std::string failure;
  const bool every_rank_owns_one = session.all_ok(own_gpu, "", &failure);
  const std::string sharing = std::to_string(session.local_size()) + " ranks on " + session.host() + " share " +
                              std::to_string(devices) + " GPU(s)";
  if (choice == CommunicatorChoice::Nccl && !every_rank_owns_one) {
    throw UserError("parallel.communicator: nccl needs a GPU per rank, but " +
                    (own_gpu ? std::string("another node's ranks share theirs") : sharing) + "; use mpi or auto");
  }
  if (choice == CommunicatorChoice::Nccl || (choice == CommunicatorChoice::Auto && every_rank_owns_one)) {
    why = choice == CommunicatorChoice::Nccl ? "parallel.communicator: nccl" : "every rank has a GPU of its own";
    return true;
  }
  why = choice == CommunicatorChoice::Mpi ? "parallel.communicator: mpi" : sharing;
  return false;
}

}  // namespace

GpuCommunicator make_gpu_communicator(CommunicatorChoice choice, const MpiSession& session, cudaStream_t stream,
                                      double timeout_s) {
  std::string why;
  GpuCommunicator result;
  if (uses_nccl(choice, session, why)) {
    result.sum = std::make_unique<NcclCommunicator>(share_nccl_unique_id(session), session.rank(), session.world(),
                                                    stream, timeout_s);
    result.description = "NCCL (" + why + ")";
    return result;
  }
  result.host = std::make_unique<MpiCommunicator>(session);
  result.sum = std::make_unique<HostStagedCommunicator>(*result.host, stream);
  result.description = "MPI through host memory (" + why + ")";
  return result;
}

GpuCommunicator make_gpu_context_group(CommunicatorChoice choice, const MpiSession& session, int group_size,
                                       cudaStream_t stream, double timeout_s) {
  std::string why;
  GpuCommunicator result;
  if (group_size <= 1) return result;
  if (uses_nccl(choice, session, why)) {
    result.sum = std::make_unique<NcclCommunicator>(share_nccl_group_id(session, group_size),
                                                    session.rank() % group_size, group_size, stream, timeout_s);
    result.description = "NCCL (" + why + ")";
    return result;
  }
  result.host = std::make_unique<MpiCommunicator>(session, group_size);
  result.sum = std::make_unique<HostStagedCommunicator>(*result.host, stream);
  result.description = "MPI through host memory (" + why + ")";
  return result;
}

}  // namespace mla
