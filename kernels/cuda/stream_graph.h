// A CUDA graph captured from a stream: the launches a piece of host code queues, recorded once
// (nothing runs while capturing) and replayed with one launch. Replaying gives the same kernels
// the same arguments they had at capture, so whatever changes between replays must live in
// device memory (docs/cuda_backend.md, The decode step as one CUDA graph).
#pragma once

#include <cuda_runtime.h>

#include <functional>

namespace mla {

class StreamGraph {
 public:
  StreamGraph() = default;
  // Captures what `enqueue` queues on `stream` (thread-local capture: another thread's calls are
  // not disturbed) and instantiates it. When enqueue throws or a call it makes cannot be captured,
  // the capture is ended and discarded, the stream left as it was, and the error thrown (CudaError
  // naming the call, or enqueue's own).
  static StreamGraph capture(cudaStream_t stream, const std::function<void()>& enqueue);
  ~StreamGraph();
  StreamGraph(StreamGraph&& other) noexcept : exec_(other.exec_) { other.exec_ = nullptr; }
  StreamGraph& operator=(StreamGraph&& other) noexcept;
  StreamGraph(const StreamGraph&) = delete;
  StreamGraph& operator=(const StreamGraph&) = delete;

  void launch(cudaStream_t stream) const;

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Inside StreamGraph::capture's enqueue: whether `stream` is being captured (an event that must
// be recorded at every replay then needs cudaEventRecordExternal).
bool stream_is_capturing(cudaStream_t stream);

}  // namespace mla
