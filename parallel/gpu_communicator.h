// How the CUDA backend's ranks sum their partial outputs (parallel.communicator): NCCL on the
// device, or MPI through pinned host memory. MPI lets several ranks share one GPU (NCCL refuses
// two ranks on one device) and serves sites without NCCL.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/host_staged_communicator.h"
#include "parallel/mpi_session.h"

namespace mla {

// The communicator of a CUDA rank, and the words for its log line.
struct GpuCommunicator {
  std::unique_ptr<Communicator> host;  // MPI, when the sum goes through it
  std::unique_ptr<Communicator> sum;   // what the step executor uses
  std::string description;             // "NCCL (every rank has a GPU of its own)"
};

// Collective. `choice` as parallel.communicator gives it: nccl needs a GPU per rank on every node
// (UserError otherwise, naming the key); auto takes NCCL when every rank has one, else MPI.
GpuCommunicator make_gpu_communicator(CommunicatorChoice choice, const MpiSession& session, cudaStream_t stream,
                                      double timeout_s);

// Collective. The gather and exchange of this rank's context group (parallel.context_parallel:
// ranks [g * group_size, (g + 1) * group_size)), through NCCL or MPI by the same rule; `sum`
// holds the group's communicator. group_size 1: no group (sum is null), nothing collective.
GpuCommunicator make_gpu_context_group(CommunicatorChoice choice, const MpiSession& session, int group_size,
                                       cudaStream_t stream, double timeout_s);

}  // namespace mla
