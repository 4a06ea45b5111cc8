#include "parallel/gpu_communicator.h"

#include "kernels/cuda/cuda_check.h"
#include "parallel/nccl_bootstrap.h"
#include "parallel/nccl_communicator.h"
#include "runtime/base/errors.h"

namespace mla {

GpuCommunicator make_gpu_communicator(CommunicatorChoice choice, const MpiSession& session, cudaStream_t stream,
                                      double timeout_s) {
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
  GpuCommunicator result;
  if (choice == CommunicatorChoice::Nccl || (choice == CommunicatorChoice::Auto && every_rank_owns_one)) {
    result.sum = std::make_unique<NcclCommunicator>(share_nccl_unique_id(session), session.rank(), session.world(),
                                                    stream, timeout_s);
    result.description =
        std::string("NCCL (") +
        (choice == CommunicatorChoice::Nccl ? "parallel.communicator: nccl" : "every rank has a GPU of its own") + ")";
    return result;
  }
  result.host = std::make_unique<MpiCommunicator>(session);
  result.sum = std::make_unique<HostStagedCommunicator>(*result.host, stream);
  result.description = std::string("MPI through host memory (") +
                       (choice == CommunicatorChoice::Mpi ? "parallel.communicator: mpi" : sharing) + ")";
  return result;
}

}  // namespace mla
