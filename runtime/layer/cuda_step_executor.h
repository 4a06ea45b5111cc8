// The runner's executor for the CUDA layer: the step's input goes to the device, the partial
// output stays there, and the communicator (NCCL) sums it in place on the layer's stream.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "parallel/communicator.h"
#include "runtime/layer/mla_layer_cuda.h"
#include "runtime/layer/runner.h"

namespace mla {

class CudaStepExecutor final : public StepExecutor {
 public:
  // comm.allreduce_sum must take device pointers (NcclCommunicator) and work on layer.stream().
  // mask: the whole run's host mask [tokens, tokens] (empty: causal), uploaded once.
  CudaStepExecutor(CudaMlaLayer& layer, Communicator& comm, const std::vector<float>& mask, int64_t tokens);
  const Communicator& communicator() const override { return comm_; }
  // x_bf16 is not read: the layer uploads x and rounds it on the device.
  StepReport forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                     int64_t mask_stride, const uint16_t* x_bf16) override;
  StepReport forward_ragged(const float* x, const RaggedStep& step) override;
  void release_sequence(int64_t slot) override { layer_.release_sequence(slot); }
  void fork_sequence(int64_t from_slot, int64_t to_slot) override { layer_.fork_sequence(from_slot, to_slot); }
  int64_t cache_pool_bytes() const override { return layer_.cache().pool_bytes(); }
  int64_t cache_bytes_in_use() const override { return layer_.cache().bytes_in_use(); }
  int64_t first_non_finite(float& value) override;
  void poison_partial() override;
  float reduce(float flag) override;
  void copy_output(float* y) override;
  // x uploaded at the first forward after turning it on, then read where it is while the caller
  // passes the same buffer and tokens (StepExecutor::keep_input_resident).
  void keep_input_resident(bool on) override {
    input_resident_ = on;
    uploaded_from_ = nullptr;
  }

 private:
  CudaMlaLayer& layer_;
  Communicator& comm_;
  int64_t tokens_ = 0;        // the run's tokens: the mask's row stride
  DeviceBuffer<float> mask_;  // [tokens, tokens] or empty
  // x's tokens on the device, `tokens` of them (within the layer's limits), from host memory.
  void upload_input(const float* x, int64_t tokens);

  DeviceBuffer<float> x_;        // the step's input
  DeviceBuffer<float> partial_;  // [count + 1]: the partial output, then the flag
  DeviceBuffer<unsigned long long> scratch_;
  int64_t count_ = 0;  // this step's output elements
  struct FreeHost {
    void operator()(float* host) const { cudaFreeHost(host); }
  };
  std::unique_ptr<float, FreeHost> flag_host_;  // pinned: the flag in, the summed flag out
  bool input_resident_ = false;
  const float* uploaded_from_ = nullptr;  // the host x that x_ holds since input_resident_ was set
  int64_t uploaded_count_ = 0;
};

}  // namespace mla
