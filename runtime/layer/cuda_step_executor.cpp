#include "runtime/layer/cuda_step_executor.h"

#include <chrono>
#include <limits>
#include <stdexcept>

#include "kernels/cuda/finite_check.h"

namespace mla {

CudaStepExecutor::CudaStepExecutor(CudaMlaLayer& layer, Communicator& comm, const std::vector<float>& mask,
                                   int64_t tokens)
    : layer_(layer), comm_(comm), tokens_(tokens), scratch_(1) {
  float* flag = nullptr;
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&flag), 2 * sizeof(float)));
  flag_host_.reset(flag);
  const CudaLayerLimits& limits = layer.limits();
  const int64_t capacity = limits.step_tokens() * layer.model().dim;
  x_ = DeviceBuffer<float>(capacity);
  partial_ = DeviceBuffer<float>(capacity + 1);
  if (!mask.empty()) {
    mask_ = DeviceBuffer<float>(static_cast<int64_t>(mask.size()));
    mask_.upload(mask, layer.stream());
  }
}

StepReport CudaStepExecutor::forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                                     int64_t mask_stride, const uint16_t* /*x_bf16*/) {
  const auto started = std::chrono::steady_clock::now();
  upload_input(x, batch * seq);
  const float* device_mask = nullptr;
  if (mask != nullptr) {
    if (mask_.size() == 0 || mask_stride != tokens_) {
      throw std::invalid_argument("CudaStepExecutor: a step mask that is not the run's mask");
    }
    device_mask = mask_.data() + start_pos * tokens_;
  }
  StepReport report = layer_.forward_device(x_.data(), batch, seq, start_pos, device_mask, tokens_, partial_.data());
  CUDA_CHECK(cudaStreamSynchronize(layer_.stream()));
  report.attention_ms = layer_.attention_ms();
  report.time_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return report;
}

StepReport CudaStepExecutor::forward_ragged(const float* x, const RaggedStep& step) {
  const auto started = std::chrono::steady_clock::now();
  upload_input(x, step.total_tokens());
  StepReport report = layer_.forward_ragged_device(x_.data(), step, partial_.data());
  CUDA_CHECK(cudaStreamSynchronize(layer_.stream()));
  report.attention_ms = layer_.attention_ms();
  report.time_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return report;
}

void CudaStepExecutor::upload_input(const float* x, int64_t tokens) {
  if (x == nullptr) throw std::invalid_argument("CudaStepExecutor::forward: no input x (the CUDA layer reads fp32 x)");
  count_ = tokens * layer_.model().dim;
  if (count_ > x_.size()) throw std::invalid_argument("CudaStepExecutor: the step passes the layer's limits");
  if (input_resident_ && x == uploaded_from_ && count_ == uploaded_count_) return;
  x_.upload(x, count_, layer_.stream());
  uploaded_from_ = x;
  uploaded_count_ = count_;
}

int64_t CudaStepExecutor::first_non_finite(float& value) {
  const int64_t index = first_non_finite_cuda(partial_.data(), count_, scratch_.data(), layer_.stream());
  if (index >= 0) {
    CUDA_CHECK(cudaMemcpy(&value, partial_.data() + index, sizeof(float), cudaMemcpyDeviceToHost));
  }
  return index;
}

void CudaStepExecutor::poison_partial() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CUDA_CHECK(cudaMemcpyAsync(partial_.data(), &nan, sizeof(nan), cudaMemcpyHostToDevice, layer_.stream()));
  CUDA_CHECK(cudaStreamSynchronize(layer_.stream()));
}

// The flag rides in the all-reduce behind the partial output; it goes in and comes back through
// pinned memory, so neither copy is staged by the driver (the stream is idle again when this
// returns, so the next step may overwrite it).
float CudaStepExecutor::reduce(float flag) {
  float* flag_in = flag_host_.get();
  float* flag_out = flag_host_.get() + 1;
  *flag_in = flag;
  CUDA_CHECK(
      cudaMemcpyAsync(partial_.data() + count_, flag_in, sizeof(float), cudaMemcpyHostToDevice, layer_.stream()));
  comm_.allreduce_sum(partial_.data(), count_ + 1);
  CUDA_CHECK(
      cudaMemcpyAsync(flag_out, partial_.data() + count_, sizeof(float), cudaMemcpyDeviceToHost, layer_.stream()));
  CUDA_CHECK(cudaStreamSynchronize(layer_.stream()));
  return *flag_out;
}

void CudaStepExecutor::copy_output(float* y) {
  CUDA_CHECK(cudaMemcpyAsync(y, partial_.data(), static_cast<size_t>(count_) * sizeof(float), cudaMemcpyDeviceToHost,
                             layer_.stream()));
  CUDA_CHECK(cudaStreamSynchronize(layer_.stream()));
}

}  // namespace mla
