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
#include <vector>

#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/pinned_uploads.h"
#include "kernels/cuda/stream_graph.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/layer/decode_graphs.h"
#include "runtime/layer/latent_cache.h"
#include "runtime/layer/mla_layer.h"
#include "runtime/layer/ragged_step.h"

namespace mla {

// The largest step the layer must serve; buffers are sized for it.
struct CudaLayerLimits {
  int64_t max_batch = 1;     // sequences per step
  int64_t max_step_len = 1;  // new tokens per sequence per step
  int64_t max_kv_len = 1;    // cached positions after a step
  bool mask = false;         // steps may carry an explicit mask (standard path)
  // Tokens of a whole step (a ragged step's sum over its sequences); 0: max_batch * max_step_len.
  int64_t max_step_tokens = 0;

  int64_t step_tokens() const { return max_step_tokens > 0 ? max_step_tokens : max_batch * max_step_len; }
};

struct CudaMemoryReport {
  int64_t weights_bytes = 0;
  int64_t kv_cache_bytes = 0;             // the latent cache's pool, plus the RoPE table
  int64_t activation_bytes = 0;           // per-step buffers: projections, naive keys/values, bf16 staging
  int64_t attention_workspace_bytes = 0;  // standard path's score buffers (the fast path needs none)
  int64_t cublas_workspace_bytes = 0;

  int64_t total() const {
    return weights_bytes + kv_cache_bytes + activation_bytes + attention_workspace_bytes + cublas_workspace_bytes;
  }
  std::string describe() const;
};

// A weight matrix on the device in the compute precision: fp32, or bf16 in bf16 mode. A bf16
// projection loaded from fp8 also keeps its codes and block scales (fp8_linear's order), which
// decode steps of up to kFp8LinearMaxRows rows stream instead of the bf16 copy.
struct DeviceMatrix {
  DeviceBuffer<float> f32;
  DeviceBuffer<__nv_bfloat16> bf16;
  DeviceBuffer<uint8_t> fp8_codes;
  DeviceBuffer<float> fp8_scales;
  int64_t fp8_scale_cols = 0;
  int64_t rows = 0;
  int64_t cols = 0;

  bool is_bf16() const { return bf16.size() > 0; }
  bool streams_fp8() const { return fp8_codes.size() > 0; }
  // Row `row` onward, in whichever precision the matrix is held.
  const void* at_row(int64_t row) const;
  int64_t bytes() const {
    return static_cast<int64_t>(f32.bytes() + bf16.bytes() + fp8_codes.bytes() + fp8_scales.bytes());
  }
  // What a step of `rows` rows reads of it: the streamed codes and scales, or the GEMM's operand.
  int64_t bytes_read(int64_t rows) const;
};

class CudaMlaLayer {
 public:
  // Uses the current CUDA device. Throws UserError when run.fast_path_max_len is longer than the
  // device can keep on chip, CudaError on a device failure (out of memory included).
  // context_shards (parallel.context_parallel): the ranks of this rank's group, which split every
  // sequence's cache (docs/design.md, The latent cache split across ranks); this layer then keeps
  // only its share of the rows, attends with the absorb formulation through the split-KV kernel
  // (UserError, naming the key, where run.formulation is naive, run.attention standard or the
  // model's widths pass the kernel's), and needs set_context_group before its first step.
  CudaMlaLayer(const ModelArgs& model, const HeadShard& shard, const LayerWeights& weights, const RunConfig& run,
               const CudaLayerLimits& limits, int64_t context_shards = 1);
  ~CudaMlaLayer();
  CudaMlaLayer(const CudaMlaLayer&) = delete;
  CudaMlaLayer& operator=(const CudaMlaLayer&) = delete;

  // One step on device pointers, queued on stream(); returns without waiting (time_ms is 0).
  // Shapes and the mask as MlaLayer::forward; y_partial [batch, seq, dim] on the device.
  StepReport forward_device(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                            int64_t mask_stride, float* y_partial);
  // A ragged step (docs/design.md, Serving-shaped steps): x and y_partial the packed tokens
  // [step.total_tokens(), dim] on the device. Throws CacheFull (naming run.kv_cache.pages) before
  // anything is queued when the pool cannot hold the step.
  StepReport forward_ragged_device(const float* x, const RaggedStep& step, float* y_partial);
  // The group's collectives, on device memory in stream() order (NcclCommunicator or
  // HostStagedCommunicator made with stream()); its world() must be context_shards. Not owned.
  void set_context_group(Communicator* group);
  int64_t context_shards() const { return context_shards_; }
  // A finished sequence's pages go back to the pool.
  void release_sequence(int64_t slot) { cache_.release(slot); }
  // to_slot gets a copy of from_slot's cached rows (LatentCache::fork), copied on the stream.
  void fork_sequence(int64_t from_slot, int64_t to_slot);
  // The pages and block tables (the rows themselves are in device memory).
  LatentCache& cache() { return cache_; }
  const LatentCache& cache() const { return cache_; }

  // Benchmarks: CUDA events around each step's attention kernels, from the first to the last (the
  // decode kernel and its merge, or the fast or standard path's launches, with what runs between
  // them when a step attends a sequence at a time). attention_ms() waits for the last step's end
  // event; 0 when timing is off or the step had no attention.
  void set_attention_timing(bool on) { time_attention_ = on; }
  double attention_ms();

  // Decode steps captured as CUDA graphs, and steps replayed from one (the capturing step's included),
  // over the layer's life (run.cuda_graphs): tests check that a replay happened, benchmarks say so.
  int64_t decode_graphs_captured() const { return decode_graphs_.captured(); }
  int64_t decode_graph_replays() const { return decode_graph_replays_; }

  cudaStream_t stream() const { return stream_; }
  const CudaMemoryReport& memory() const { return memory_; }
  // The weight bytes a step of `tokens` tokens reads (the projections streamed as fp8 codes where
  // they are, the bf16 or fp32 copies otherwise, wkv_b and the norms): its floor's weight part.
  int64_t weight_bytes_read(int64_t tokens) const;
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
  // bf16 mode: `values` (bf16 numbers held in fp32) as dense bf16 in bf16_staging_.
  const __nv_bfloat16* stage_bf16(const float* values, int64_t rows, int64_t cols, int64_t stride);
  // Whether a step of at most max_new_tokens new tokens per sequence, kv_len the longest, takes the
  // split-KV decode kernel (attention_decode); the plan's reason says so (or its path turns standard
  // where the kernel cannot serve the model and kv_len passes the fused kernel's limit).
  bool takes_decode_kernel(StepPlan& plan, int64_t max_new_tokens, int64_t kv_len, bool has_mask) const;
  // Whether uniform steps take the batched route over the dense fp32 cache (else every step goes
  // through the block tables, a sequence at a time).
  bool dense_fp32_cache() const { return !cache_.shape().paged && cache_.shape().dtype == LatentDType::F32; }
  float* dense_cache() { return reinterpret_cast<float*>(latent_pool_.data()); }
  StepReport run_ragged(const float* x, const RaggedStep& step, const float* mask, int64_t mask_stride,
                        float* y_partial);
  const __nv_bfloat16* stage_input(const float* x, int64_t tokens);
  void project_queries(const float* x, const __nv_bfloat16* x_staged, int64_t tokens);
  // kv = wkv_a(x), normed, RoPE on it and on q: the uniform step's positions, or each token's
  // (token_positions, device memory).
  void project_latent(const float* x, const __nv_bfloat16* x_staged, int64_t tokens, int64_t seq, int64_t start_pos,
                      const int64_t* token_positions);
  void attend(const StepPlan& plan, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
              int64_t mask_stride, StepReport& report);
  void attend_ragged(const StepPlan& plan, const RaggedIndex& index, const PagedLatentView& view, const float* mask,
                     int64_t mask_stride, StepReport& report);
  void attend_gathered(const StepPlan& plan, const RaggedIndex& index, const PagedLatentView& view, const float* mask,
                       int64_t mask_stride, StepReport& report);
  // The sequences whose rows latent_rows_ holds at max_kv_len (attend_gathered's group).
  int64_t gathered_sequences() const;
  int64_t absorb_run_tokens() const;
  // The step's rows into the cache through the block tables (token_sequence_, token_position_).
  void append_step_rows(int64_t tokens, const PagedLatentView& view);
  // A decode-shaped absorb step: projections, append, every sequence's attention in one launch
  // (and a merge when the keys are split) over the rows in place, output projection; launched one
  // by one or as a CUDA graph (run.cuda_graphs).
  void run_decode_step(const float* x, const RaggedIndex& index, const PagedLatentView& view, float* y_partial,
                       StepReport& report);
  void enqueue_decode_step(const float* x, int64_t tokens, const AttentionParams& p, const AttentionDecodeSplit& split,
                           float* y_partial);
  // The step's per-sequence lists (start_pos, new_tokens, token_offset) on the device, for the
  // split-KV kernel.
  void upload_sequence_lists(const RaggedIndex& index);
  // Context parallelism: the step's rows this rank keeps go to its share of the cache; the group's
  // absorbed queries are gathered, attended over this rank's rows with their log-sum-exps, handed
  // back to the heads' owners and merged (docs/design.md, The latent cache split across ranks).
  void append_own_rows(const RaggedIndex& index, const PagedLatentView& view);
  void attend_split(const RaggedIndex& index, const PagedLatentView& view, StepReport& report);
  int64_t split_run_tokens() const;
  void run_attention(AttentionPath path, const AttentionParams& params, StepReport& report);
  void mark_attention_begin();
  void mark_attention_end();
  void record_event(cudaEvent_t event);
  // Tokens [first_token, first_token + tokens) of the step: q_ folded into q_absorbed_ from its
  // start; o_latent_ from its start unfolded into o_ (tokens <= absorb_tokens_).
  void absorb_queries(int64_t first_token, int64_t tokens);
  void absorb_outputs(int64_t first_token, int64_t tokens);
  // pages: the step's bf16 rows for the flash kernel to read in place (latent then unused).
  void attend_absorbed(AttentionPath path, int64_t first_token, int64_t count, int64_t seq, int64_t start_pos,
                       const float* latent, int64_t latent_stride, const float* mask, int64_t mask_stride,
                       StepReport& report, const PagedLatentView* pages = nullptr);
  void attend_naive(AttentionPath path, int64_t first_token, int64_t count, int64_t seq, int64_t start_pos,
                    const float* latent, int64_t latent_stride, const float* mask, int64_t mask_stride,
                    StepReport& report);
  const float* gather_rows(const PagedLatentView& view, int64_t first, int64_t sequences, int64_t count);
  void check_formulation_buffers(Formulation formulation) const;
  // latent: the cache rows of `batch` sequences, kv_len each, batch_stride floats apart. bf16_keys:
  // into expanded_bf16_ for the flash kernel; else fp32 keys_ and kv_expanded_.
  void expand_keys_values(const float* latent, int64_t batch_stride, int64_t batch, int64_t kv_len, bool bf16_keys);
  bool standard_path_possible() const;

  ModelArgs model_;
  HeadShard shard_;
  RunConfig run_;
  CudaLayerLimits limits_;
  bool round_bf16_ = false;
  int64_t latent_width_ = 0;  // C + dr
  int64_t context_shards_ = 1;
  Communicator* context_group_ = nullptr;
  LatentCache cache_;  // pages and block tables (this rank's share of the rows); the rows are in latent_pool_
  CudaMemoryReport memory_;

  cudaStream_t stream_ = nullptr;
  cudaEvent_t attention_begin_ = nullptr, attention_end_ = nullptr;
  bool time_attention_ = false;
  bool attention_marked_ = false;  // this step's begin event is recorded
  std::unique_ptr<CublasContext> cublas_;

  DeviceMatrix wq_, wq_a_, wq_b_, wkv_a_, wkv_b_, wo_;
  bool stream_fp8_ = true;  // MLA_CUDA_FP8_STREAM: decode steps stream fp8 codes where they are kept
  // bf16 naive steps on the fast path take the flash kernel over bf16 keys and values
  // (MLA_CUDA_FLASH, the model's widths within the kernel's).
  bool flash_naive_ = false;
  // bf16 absorb steps on the fast path take it over the cache's bf16 rows, read through the block
  // tables without a gather (MLA_CUDA_FLASH, run.kv_cache dtype bf16: auto's in bf16 compute).
  bool flash_absorb_ = false;
  DeviceBuffer<float> q_norm_, kv_norm_;
  DeviceBuffer<float> rope_cos_, rope_sin_;  // [max_seq_len, dr / 2]
  // The latent cache's pages (LatentCacheShape), rows in the cache's dtype: dense, one page of
  // max_seq_len rows per slot, or paged.
  DeviceBuffer<uint8_t> latent_pool_;
  // Every step's lists go to the device through pinned host memory (token positions, block tables,
  // the decode kernel's per-sequence lists, a context group's own rows).
  std::unique_ptr<PinnedUploads> uploads_;
  // A ragged step's index: each packed token's sequence and position, the step's block table.
  DeviceBuffer<int64_t> token_sequence_, token_position_;
  DeviceBuffer<int32_t> block_table_;
  RaggedIndex step_index_;
  std::vector<int32_t> block_table_host_;
  // A group of sequences' cache rows as fp32, read through the block tables (gathered_sequences).
  static constexpr int64_t kGatheredRowsBytes = int64_t{16} << 20;
  DeviceBuffer<float> latent_rows_;
  // The decode kernel's: the step's per-sequence lists (start_pos, new_tokens, token_offset), and
  // the partial outputs and log-sum-exps of split keys (decode_partial_rows_ rows).
  DeviceBuffer<int64_t> sequence_lists_;
  std::vector<int64_t> sequence_lists_host_;
  DeviceBuffer<float> decode_workspace_;
  int64_t decode_partial_rows_ = 0;
  // run.cuda_graphs: decode steps by shape (decode_graphs.h). A rank whose driver could not capture
  // one stops trying (decode_graphs_failed_).
  static constexpr size_t kDecodeGraphCapacity = 128;
  DecodeGraphCache<StreamGraph> decode_graphs_{kDecodeGraphCapacity};
  bool decode_graphs_failed_ = false;
  int64_t decode_graph_replays_ = 0;
  // Context parallelism: the rows this rank keeps (ShardRows: token, sequence, row), the group's
  // absorbed queries [shards, tokens, heads, C + dr], the partial outputs and log-sum-exps this
  // rank computes for every rank of the group, and those it receives for its own heads.
  // Every rank's block holds group_heads_max_ heads (uneven heads: the group's most), its own first;
  // padded_queries_ is this rank's in such a block, where it holds fewer.
  DeviceBuffer<int64_t> own_rows_;
  std::vector<int64_t> own_rows_host_;
  std::vector<int64_t> group_heads_;  // the heads of each rank of the group
  int64_t group_heads_max_ = 0;
  DeviceBuffer<float> group_queries_, padded_queries_, partial_out_, partial_lse_, received_out_, received_lse_;

  // bf16 mode: the step's input rounded to bf16 once, the operand of both GEMMs that read it.
  DeviceBuffer<__nv_bfloat16> x_bf16_;
  DeviceBuffer<__nv_bfloat16> bf16_staging_;  // bf16 mode: a GEMM's activation operand
  DeviceBuffer<float> q_latent_, q_, kv_, q_absorbed_, o_latent_, o_;
  // The tokens q_absorbed_ and o_latent_ hold: within run.score_chunk_bytes, and at least a decode
  // step's (the whole step's under a context split); longer absorb steps go a run at a time.
  int64_t absorb_tokens_ = 0;
  DeviceBuffer<float> kv_expanded_, keys_;  // naive, off the flash kernel
  // naive on the flash kernel: its bf16 rows, in kv_expanded_bf16_ or in kv_expanded_'s memory
  // where that is allocated too (allocate_activations).
  DeviceBuffer<__nv_bfloat16> kv_expanded_bf16_;
  __nv_bfloat16* expanded_bf16_ = nullptr;
  DeviceBuffer<float> scores_;       // standard path only
  int64_t score_buffer_floats_ = 0;  // per buffer; two when bf16 scores are split
};

}  // namespace mla
