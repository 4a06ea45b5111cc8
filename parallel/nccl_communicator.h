// The NCCL implementation of the communicator (GPU ranks): the partial outputs are summed in
// place, on the layer's stream, in device memory.
//
// No rank may hang on a dead or stalled peer: the communicator is created non-blocking, and every
// wait (joining the clique, each all-reduce) polls ncclCommGetAsyncError and the stream against a
// deadline; on an error or at the deadline the communicator is aborted (ncclCommAbort) and
// RankFailure names this rank, its host and what it was waiting for.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <string>

#include "parallel/communicator.h"

namespace mla {

[[noreturn]] void throw_nccl_error(const char* call, const char* file, int line, ncclResult_t result);

}  // namespace mla

#define NCCL_CHECK(call)                                                         \
  do {                                                                           \
    const ncclResult_t mla_nccl_result_ = (call);                                \
    if (mla_nccl_result_ != ncclSuccess && mla_nccl_result_ != ncclInProgress) { \
      ::mla::throw_nccl_error(#call, __FILE__, __LINE__, mla_nccl_result_);      \
    }                                                                            \
  } while (0)

namespace mla {

// A fresh id for a new clique (rank 0 makes it; the launcher shares it with the others).
ncclUniqueId new_nccl_unique_id();

class NcclCommunicator final : public Communicator {
 public:
  // Joins the clique of `world` ranks sharing `id` on the current CUDA device; collectives run
  // on `stream`. timeout_s <= 0: wait without a deadline.
  NcclCommunicator(const ncclUniqueId& id, int rank, int world, cudaStream_t stream, double timeout_s);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string host() const override { return host_; }
  // `values` is device memory. Returns once the sum is in place (the stream has reached it).
  void allreduce_sum(float* values, int64_t count) override;
  // Device memory; return once recv holds the result. The exchange is one NCCL group of a send
  // and a receive per peer.
  void allgather(const float* send, int64_t count, float* recv) override;
  void alltoall(const float* send, int64_t count, float* recv) override;

 private:
  // Polls until NCCL has no operation in progress and, when `stream_done` asks, the stream has
  // drained; aborts and throws RankFailure on an asynchronous error or at the deadline.
  void wait(const std::string& what, bool stream_done);
  [[noreturn]] void abort_and_throw(const std::string& why);

  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int world_ = 1;
  std::string host_;
  cudaStream_t stream_ = nullptr;
  double timeout_s_ = 0.0;
};

}  // namespace mla
