#include "parallel/gpu_communicator.h"

#include "kernels/cuda/cuda_check.h"
#include "parallel/nccl_bootstrap.h"
#include "parallel/nccl_communicator.h"
#include "runtime/base/errors.h"

namespace mla {

HostStagedCommunicator::~HostStagedCommunicator() {
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

void HostStagedCommunicator::allreduce_sum(float* values, int64_t count) {
  if (count > staging_count_) {
    if (staging_ != nullptr) CUDA_CHECK(cudaFreeHost(staging_));
    staging_ = nullptr;
    CUDA_CHECK(cudaMallocHost(&staging_, static_cast<size_t>(count) * sizeof(float)));
    staging_count_ = count;
  }
  const size_t bytes = static_cast<size_t>(count) * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(staging_, values, bytes, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  host_.allreduce_sum(staging_, count);
  CUDA_CHECK(cudaMemcpyAsync(values, staging_, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

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
