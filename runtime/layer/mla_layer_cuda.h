// One rank's MLA layer on an NVIDIA GPU: the CUDA twin of runtime/mla_layer (docs/design.md, One
// step of one rank), step for step the same arithmetic and the same bf16 rounding points, with
// the kernels of kernels/cuda and cuBLAS GEMMs.
//
// Every device buffer is allocated once, in the constructor, at the size the config and the
// run's limits ask for (weights, the latent KV cache, activations, attention workspace); a step
// allocates nothing. memory() reports the bytes of each.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cuda_bf16.h>
#include <memory>
#include <string>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/gemm.h"
#include "parallel/sharding.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/layer/mla_layer.h"

namespace mla {

// The largest step the layer must serve; buffers are sized for it.
struct CudaLayerLimits {
  int64_t max_batch = 1;     // sequences per step
  int64_t max_step_len = 1;  // new tokens per sequence per step
  int64_t max_kv_len = 1;    // cached positions after a step
  bool mask = false;         // steps may carry an explicit mask (standard path)
};

struct CudaMemoryReport {
  int64_t weights_bytes = 0;
  int64_t kv_cache_bytes = 0;             // the latent cache, plus the RoPE table
  int64_t activation_bytes = 0;           // per-step buffers: projections, naive keys/values, bf16 staging
  int64_t attention_workspace_bytes = 0;  // standard path's score buffers (the fast path needs none)
  int64_t cublas_workspace_bytes = 0;

  int64_t total() const {
    return weights_bytes + kv_cache_bytes + activation_bytes + attention_workspace_bytes + cublas_workspace_bytes;
  }
  std::string describe() const;
};

// A weight matrix on the device in the compute precision: fp32, or bf16 in bf16 mode.
struct DeviceMatrix {
  DeviceBuffer<float> f32;
  DeviceBuffer<__nv_bfloat16> bf16;
  int64_t rows = 0;
  int64_t cols = 0;

  bool is_bf16() const { return bf16.size() > 0; }
  // Row `row` onward, in whichever precision the matrix is held.
  const void* at_row(int64_t row) const;
  int64_t bytes() const { return static_cast<int64_t>(f32.bytes() + bf16.bytes()); }
};

class CudaMlaLayer {
 public:
  // Uses the current CUDA device. Throws UserError when run.fast_path_max_len is longer than the
  // device can keep on chip, CudaError on a device failure (out of memory included).
  CudaMlaLayer(const ModelArgs& model, const HeadShard& shard, const LayerWeights& weights, const RunConfig& run,
               const CudaLayerLimits& limits);
  ~CudaMlaLayer();
  CudaMlaLayer(const CudaMlaLayer&) = delete;
  CudaMlaLayer& operator=(const CudaMlaLayer&) = delete;

  // One step on device pointers, queued on stream(); returns without waiting (time_ms is 0).
  // Shapes and the mask as MlaLayer::forward; y_partial [batch, seq, dim] on the device.
  StepReport forward_device(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                            int64_t mask_stride, float* y_partial);

  cudaStream_t stream() const { return stream_; }
  const CudaMemoryReport& memory() const { return memory_; }
  const HeadShard& shard() const { return shard_; }
  const ModelArgs& model() const { return model_; }
  const CudaLayerLimits& limits() const { return limits_; }

 private:
  void allocate(const LayerWeights& weights);
  void upload_weights(const LayerWeights& weights);
  void allocate_cache();
  void allocate_activations();
  void allocate_scores();
  // x_staged (bf16 mode only): x already as a dense bf16 operand, used in place of x.
  void linear(const float* x, int64_t x_stride, const DeviceMatrix& weight, int64_t rows, float* y, int64_t y_stride,
              const __nv_bfloat16* x_staged = nullptr);
  void round_rows(float* values, int64_t rows, int64_t row_stride, int64_t inner, int64_t inner_stride, int64_t width);
  void set_activation_operand(GemmCudaParams& g, const float* values, int64_t rows, int64_t cols, int64_t stride);
  bool decode_prefers_standard(const StepPlan& plan, int64_t seq) const;
  void project_queries(const float* x, const __nv_bfloat16* x_staged, int64_t tokens);
  void project_latent(const float* x, const __nv_bfloat16* x_staged, int64_t batch, int64_t seq, int64_t start_pos);
  void attend(const StepPlan& plan, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
              int64_t mask_stride, StepReport& report);
  void absorb_queries(int64_t tokens);
  void absorb_outputs(int64_t tokens);
  void expand_keys_values(int64_t batch, int64_t kv_len);

  ModelArgs model_;
  HeadShard shard_;
  RunConfig run_;
  CudaLayerLimits limits_;
  bool round_bf16_ = false;
  int64_t latent_width_ = 0;  // C + dr
  int64_t cached_len_ = 0;
  int64_t cached_batch_ = 0;
  CudaMemoryReport memory_;

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CublasContext> cublas_;

  DeviceMatrix wq_, wq_a_, wq_b_, wkv_a_, wkv_b_, wo_;
  DeviceBuffer<float> q_norm_, kv_norm_;
  DeviceBuffer<float> rope_cos_, rope_sin_;  // [max_seq_len, dr / 2]
  DeviceBuffer<float> kv_cache_;             // [max_batch_size, max_seq_len, C + dr]

  // bf16 mode: the step's input rounded to bf16 once, the operand of both GEMMs that read it.
  DeviceBuffer<__nv_bfloat16> x_bf16_;
  DeviceBuffer<__nv_bfloat16> bf16_staging_;  // bf16 mode: a GEMM's activation operand
  DeviceBuffer<float> q_latent_, q_, kv_, q_absorbed_, o_latent_, o_;
  DeviceBuffer<float> kv_expanded_, keys_;  // naive only
  DeviceBuffer<float> scores_;              // standard path only
  int64_t score_buffer_floats_ = 0;         // per buffer; two when bf16 scores are split
};

}  // namespace mla
