#include "parallel/host_staged_communicator.h"

#include "kernels/cuda/cuda_check.h"

namespace mla {

HostStagedCommunicator::~HostStagedCommunicator() {
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

float* HostStagedCommunicator::staging(int64_t count) {
  if (count > staging_count_) {
    if (staging_ != nullptr) CUDA_CHECK(cudaFreeHost(staging_));
    staging_ = nullptr;
    staging_count_ = 0;
    CUDA_CHECK(cudaMallocHost(&staging_, static_cast<size_t>(count) * sizeof(float)));
    staging_count_ = count;
  }
  return staging_;
}

void HostStagedCommunicator::allreduce_sum(float* values, int64_t count) {
  float* host = staging(count);
  const size_t bytes = static_cast<size_t>(count) * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(host, values, bytes, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  host_.allreduce_sum(host, count);
  CUDA_CHECK(cudaMemcpyAsync(values, host, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename Exchange>
void HostStagedCommunicator::through_host(const float* send, int64_t send_count, int64_t count, float* recv,
                                          Exchange&& exchange) {
  const int64_t recv_count = host_.world() * count;
  float* host_send = staging(send_count + recv_count);
  float* host_recv = host_send + send_count;
  CUDA_CHECK(cudaMemcpyAsync(host_send, send, static_cast<size_t>(send_count) * sizeof(float), cudaMemcpyDeviceToHost,
                             stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  exchange(host_send, host_recv);
  CUDA_CHECK(cudaMemcpyAsync(recv, host_recv, static_cast<size_t>(recv_count) * sizeof(float), cudaMemcpyHostToDevice,
                             stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void HostStagedCommunicator::allgather(const float* send, int64_t count, float* recv) {
  through_host(send, count, count, recv, [&](const float* in, float* out) { host_.allgather(in, count, out); });
}

void HostStagedCommunicator::alltoall(const float* send, int64_t count, float* recv) {
  through_host(send, host_.world() * count, count, recv,
               [&](const float* in, float* out) { host_.alltoall(in, count, out); });
}

}  // namespace mla
