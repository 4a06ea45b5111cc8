#include "kernels/cuda/stream_graph.h"

#include "kernels/cuda/cuda_check.h"

namespace mla {

namespace {

// Ends a capture that failed part way and drops what it recorded; the error being thrown is the
// one to report, so this one's own status is only cleared.
void abandon_capture(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);
    if (partial != nullptr) cudaGraphDestroy(partial);
  }
  cudaGetLastError();  // an invalidated capture leaves its error behind: not this stream's next call's
}

}  // namespace

StreamGraph StreamGraph::capture(cudaStream_t stream, const std::function<void()>& enqueue) {
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    enqueue();
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  } catch (...) {
    abandon_capture(stream);
    throw;
  }
  StreamGraph captured;
  const cudaError_t status = cudaGraphInstantiate(&captured.exec_, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph is a copy
  if (status != cudaSuccess) {
    throw_cuda_error("cudaGraphInstantiate(&exec, graph, 0)", __FILE__, __LINE__, cudaGetErrorString(status));
  }
  return captured;
}

StreamGraph::~StreamGraph() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);  // no throw from a destructor
}

StreamGraph& StreamGraph::operator=(StreamGraph&& other) noexcept {
  if (this != &other) {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = other.exec_;
    other.exec_ = nullptr;
  }
  return *this;
}

void StreamGraph::launch(cudaStream_t stream) const { CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status == cudaStreamCaptureStatusActive;
}

}  // namespace mla
