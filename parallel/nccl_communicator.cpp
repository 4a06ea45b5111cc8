#include "parallel/nccl_communicator.h"

#include <chrono>
#include <thread>

#include "kernels/cuda/cuda_check.h"

namespace mla {

void throw_nccl_error(const char* call, const char* file, int line, ncclResult_t result) {
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  ncclGetErrorString(result));
}

ncclUniqueId new_nccl_unique_id() {
  ncclUniqueId id;
  NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int rank, int world, cudaStream_t stream, double timeout_s)
    : rank_(rank), world_(world), host_(this_host_name()), stream_(stream), timeout_s_(timeout_s) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; wait() decides how long is too long
  ncclUniqueId shared_id = id;
  NCCL_CHECK(ncclCommInitRankConfig(&comm_, world, shared_id, rank, &config));
  wait("joining the NCCL clique of " + std::to_string(world) + " ranks", false);
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr) return;
  // Finalize flushes outstanding work; should it not finish in time, abort: never hang here.
  ncclResult_t state = ncclCommFinalize(comm_);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
  }
  if (state == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    ncclCommAbort(comm_);
  }
}

void NcclCommunicator::abort_and_throw(const std::string& why) {
  ncclCommAbort(comm_);
  comm_ = nullptr;
  throw RankFailure("rank " + std::to_string(rank_) + " (" + host_ + "): " + why +
                    "; the NCCL communicator was aborted");
}

void NcclCommunicator::wait(const std::string& what, bool stream_done) {
  const auto started = std::chrono::steady_clock::now();
  for (int polls = 0;; ++polls) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    if (query != ncclSuccess) state = query;
    if (state != ncclSuccess && state != ncclInProgress) {
      const char* detail = ncclGetLastError(comm_);
      abort_and_throw(what + " failed: " + ncclGetErrorString(state) +
                      (detail != nullptr && *detail != '\0' ? std::string(" (") + detail + ")" : std::string()));
    }
    if (state == ncclSuccess) {
      if (!stream_done) return;
      const cudaError_t stream_state = cudaStreamQuery(stream_);
      if (stream_state == cudaSuccess) return;
      if (stream_state != cudaErrorNotReady) {
        abort_and_throw(what + " failed on the device: " + cudaGetErrorString(stream_state));
      }
    }
    const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (timeout_s_ > 0 && waited_s > timeout_s_) {
      abort_and_throw(what + " did not complete within parallel.timeout_s = " + std::to_string(timeout_s_) +
                      " s (a peer rank died or stalled)");
    }
    // Spin for the first polls (a healthy all-reduce takes microseconds), then back off.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void NcclCommunicator::allreduce_sum(float* values, int64_t count) {
  if (comm_ == nullptr) throw RankFailure("rank " + std::to_string(rank_) + ": the NCCL communicator was aborted");
  NCCL_CHECK(ncclAllReduce(values, values, static_cast<size_t>(count), ncclFloat32, ncclSum, comm_, stream_));
  wait("all-reduce of " + std::to_string(count) + " floats", true);
}

void NcclCommunicator::allgather(const float* send, int64_t count, float* recv) {
  if (comm_ == nullptr) throw RankFailure("rank " + std::to_string(rank_) + ": the NCCL communicator was aborted");
  NCCL_CHECK(ncclAllGather(send, recv, static_cast<size_t>(count), ncclFloat32, comm_, stream_));
  wait("all-gather of " + std::to_string(count) + " floats a rank", true);
}

void NcclCommunicator::alltoall(const float* send, int64_t count, float* recv) {
  if (comm_ == nullptr) throw RankFailure("rank " + std::to_string(rank_) + ": the NCCL communicator was aborted");
  const size_t piece = static_cast<size_t>(count);
  NCCL_CHECK(ncclGroupStart());
  for (int peer = 0; peer < world_; ++peer) {
    NCCL_CHECK(ncclSend(send + peer * count, piece, ncclFloat32, peer, comm_, stream_));
    NCCL_CHECK(ncclRecv(recv + peer * count, piece, ncclFloat32, peer, comm_, stream_));
  }
  NCCL_CHECK(ncclGroupEnd());
  wait("all-to-all of " + std::to_string(count) + " floats a rank", true);
}

}  // namespace mla
