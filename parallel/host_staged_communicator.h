// A GPU rank's collectives through a host communicator (MPI, or a single process): device memory
// staged through pinned host memory. parallel.communicator: mpi (gpu_communicator.h) uses it so
// that several ranks can share one GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "parallel/communicator.h"

namespace mla {

// Sums device memory through a host communicator: device -> pinned host buffer -> the host sum ->
// device, ordered on `stream`. Every rank ends with the same bits, as the host communicator gives.
// The gather and the exchange go the same way.
class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(Communicator& host, cudaStream_t stream) : host_(host), stream_(stream) {}
  ~HostStagedCommunicator() override;
  HostStagedCommunicator(const HostStagedCommunicator&) = delete;
  HostStagedCommunicator& operator=(const HostStagedCommunicator&) = delete;

  int rank() const override { return host_.rank(); }
  int world() const override { return host_.world(); }
  std::string host() const override { return host_.host(); }
  // `values` is device memory. Returns once the sum is back in it.
  void allreduce_sum(float* values, int64_t count) override;
  // send and recv are device memory; return once recv holds the result.
  void allgather(const float* send, int64_t count, float* recv) override;
  void alltoall(const float* send, int64_t count, float* recv) override;

 private:
  // The pinned staging buffer holds at least `count` floats.
  float* staging(int64_t count);
  // send (device, send_count) -> pinned host -> exchange(host send, host recv) -> recv (device,
  // world * count) for the gather and the exchange alike.
  template <typename Exchange>
  void through_host(const float* send, int64_t send_count, int64_t count, float* recv, Exchange&& exchange);

  Communicator& host_;
  cudaStream_t stream_;
  float* staging_ = nullptr;  // pinned, grown to the largest message asked
  int64_t staging_count_ = 0;
};

}  // namespace mla
