// One rank's MLA layer on the CPU (docs/design.md, One step of one rank): its slice of heads, the
// latent KV cache, and a forward step that returns the partial output before the all-reduce.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/packed_linear.h"
#include "kernels/cpu/rope.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/layer/attention_layout.h"
#include "runtime/layer/attention_plan.h"
#include "runtime/layer/latent_cache.h"
#include "runtime/layer/ragged_step.h"

namespace mla {

struct StepReport {
  int64_t batch = 0;      // sequences with tokens
  int64_t seq = 0;        // new tokens per sequence (ragged: of the whole step)
  int64_t start_pos = 0;  // ragged: -1, each sequence has its own
  int64_t kv_len = 0;     // ragged: the longest sequence's
  // Continuous batching: the step's prompt tokens and decode tokens (-1: a uniform schedule's step).
  int64_t prefill_tokens = -1;
  int64_t decode_tokens = 0;
  StepPlan plan;
  double time_ms = 0.0;
  // Where the CPU layer's time went: the linear layers (prepared weights, the naive expansion
  // included) and the attention kernel; the rest is norms, RoPE, the cache append, the absorb
  // folds and copies. The CUDA layer's work is asynchronous: linear_ms stays 0, and attention_ms
  // is measured by CUDA events where a benchmark asks for it (CudaMlaLayer::set_attention_timing).
  double linear_ms = 0.0;
  double attention_ms = 0.0;
  int64_t attention_workspace_bytes = 0;  // score buffers of the chosen path, all threads
  // Context parallelism: the bytes this rank received from the rest of its group this step (the
  // gathered queries, the exchanged partial outputs and log-sum-exps); it sends as many.
  int64_t context_bytes = 0;
  // CUDA: the step was one launch of a captured decode graph (run.cuda_graphs).
  bool graph_replayed = false;
};

// What both layers (CPU and CUDA) share around a step.
// RoPE's frequency parameters from the model's shape.
RopeFrequencyParams rope_params(const ModelArgs& model);
// A step's report with its plan (path, formulation, reason) for these shapes.
StepReport plan_step_report(const ModelArgs& model, const RunConfig& run, int64_t n_local_heads, int64_t batch,
                            int64_t seq, int64_t start_pos, bool has_mask);
// The same for any step: a uniform one as above, a ragged one planned once over its sequences
// (plan_ragged_step).
StepReport plan_step_report(const ModelArgs& model, const RunConfig& run, int64_t n_local_heads, const RaggedStep& step,
                            const RaggedIndex& index, bool has_mask);

class MlaLayer {
 public:
  // `run` supplies compute_dtype, attention, formulation, fast_path_max_len, score_chunk_bytes.
  // context_group (parallel.context_parallel > 1): the ranks of this rank's group, which split
  // every sequence's latent cache between them (docs/design.md, The latent cache split across
  // ranks); each step then exchanges queries and partial attention outputs with them, so every
  // rank of the group must run the same steps. nullptr: this rank keeps the whole cache.
  MlaLayer(const ModelArgs& model, const HeadShard& shard, LayerWeights weights, const RunConfig& run,
           Communicator* context_group = nullptr);

  // One step: x [batch, seq, dim] holds the tokens at positions start_pos .. start_pos+seq-1 of
  // every sequence; start_pos must not skip past what is cached. mask: nullptr (causal) or an
  // additive [seq, start_pos+seq] mask with row stride mask_stride. Writes this rank's partial
  // output y_partial [batch, seq, dim]. Throws std::invalid_argument on shapes the cache cannot hold.
  // x_bf16 (compute_dtype bf16 only): the same tokens as bf16 numbers, read instead of x (which may
  // then be null), as a bf16 model hands activations from layer to layer; otherwise the step
  // rounds x itself.
  StepReport forward(const float* x, int64_t batch, int64_t seq, int64_t start_pos, const float* mask,
                     int64_t mask_stride, float* y_partial, const uint16_t* x_bf16 = nullptr);
  // A ragged step (docs/design.md, Serving-shaped steps): x and y_partial are the packed tokens
  // [step.total_tokens(), dim]; each sequence's start_pos must not skip past what its slot holds.
  // The cache takes the pages the step needs first: when the pool is short it throws CacheFull
  // and nothing is written.
  StepReport forward(const float* x, const RaggedStep& step, float* y_partial, const uint16_t* x_bf16 = nullptr);
  // A finished sequence: its slot holds nothing and its pages go back to the pool.
  void release_sequence(int64_t slot) { cache_.release(slot); }
  // to_slot gets a copy of from_slot's cached rows (LatentCache::fork).
  void fork_sequence(int64_t from_slot, int64_t to_slot) { cache_.fork(from_slot, to_slot); }

  LatentCache& cache() { return cache_; }
  const LatentCache& cache() const { return cache_; }
  int64_t kv_cache_bytes() const { return cache_.pool_bytes(); }
  // Bytes of the prepared weights (what a decode step streams) and which GEMM runs them.
  int64_t weight_bytes() const;
  // Weight bytes the last step read from memory, for a step of `tokens` new tokens.
  int64_t weight_bytes_read(int64_t tokens, Formulation formulation) const;
  std::string linear_implementation() const { return wkv_a_.implementation(); }
  const HeadShard& shard() const { return shard_; }
  const ModelArgs& model() const { return model_; }

  // After a step whose partial output is not finite: where its first non-finite value appeared,
  // in the order the step computed (the output of wq, wkv_a, ..., the attention, wo), naming the
  // weight that made it and where that weight came from. Empty when every traced tensor is finite.
  std::string explain_non_finite() const;

 private:
  // One tensor the step wrote, for explain_non_finite(): fp32 values or bf16 bits, [rows, width]
  // with a row stride.
  struct TracedTensor {
    std::string what;    // "the output of wkv_a"
    std::string weight;  // the weight that made it ("wkv_a"), or empty
    const float* values = nullptr;
    const uint16_t* bits = nullptr;
    int64_t rows = 0, width = 0, stride = 0;
  };
  void trace(TracedTensor tensor) { step_trace_.push_back(std::move(tensor)); }

  // x: the step's input; x_bf16: in bf16 compute, the same as bf16 numbers (then x is not read).
  // q_as_bf16: the step's attention runs on AMX tiles (bf16 only), which read q as bf16 numbers.
  void project_queries(const float* x, const uint16_t* x_bf16, int64_t tokens, bool q_as_bf16);
  StepReport run_step(const float* x, const uint16_t* x_bf16, const RaggedStep& step, const float* mask,
                      int64_t mask_stride, float* y_partial);
  void project_latent(const float* x, const uint16_t* x_bf16, const RaggedIndex& index, bool q_as_bf16);
  void attend(const StepPlan& plan, const AttentionStep& step, bool amx_attention, StepReport& report);
  // The cache split over the context group: absorb's queries gathered from the group, each
  // rank's partial attention over its rows sent back to the heads' owners and merged.
  void attend_split(const StepPlan& plan, const AttentionStep& step, StepReport& report);
  // Where a run's sequences sit among the step's (the cache view's and the naive expansion's
  // sequence blocks), and the most rows of a sequence this rank holds (the expansion's length).
  struct SplitRows {
    int64_t first_sequence = 0;
    int64_t held = 0;
  };
  // Each rank of the group's queries of a run of the step's tokens over this rank's rows, into
  // partial_out_ / partial_lse_ (value_dim values a row); returns the values a part holds.
  int64_t split_partials(const StepPlan& plan, const AttentionStep& run_step, int64_t first_token,
                         const SplitRows& rows, StepReport& report);
  // This rank's rows of the step's tokens, appended to its share of the cache.
  void append_own_rows(const float* kv, const RaggedIndex& index);
  int64_t context_shards() const { return context_group_ != nullptr ? context_group_->world() : 1; }
  void gather_group_wkv_b(LinearPrecision precision);
  // The first of the group's rank `group_rank`'s heads among the heads of the whole group.
  int64_t group_head_begin(int64_t group_rank) const;
  void absorb_queries(int64_t tokens);
  void absorb_outputs(int64_t tokens);
  // naive: the rows every sequence of the step attends to, gathered from the cache; sequence b's
  // positions are rows first_row[b] .. first_row[b] + kv_len[b] - 1.
  struct ExpansionRows {
    std::vector<int64_t> first_row, kv_len;
    std::vector<int64_t> row_sequence;  // per row
    int64_t rows = 0;
    int64_t padded_len = 0;  // the longest kv_len: the head-major buffers' position count
    int64_t heads = 0;       // heads expanded
  };
  // Whose keys and values an expansion makes: this rank's heads from all the cached rows, or under
  // the split every head of the group from this rank's rows (shard `shard` of `shards`).
  struct Expansion {
    int64_t heads = 0;
    const PackedLinear* wkv_b = nullptr;
    int64_t shards = 1;
    int64_t shard = 0;
  };
  void expand_keys_values(const AttentionStep& step, bool as_bf16, const Expansion& expansion);
  void gather_latent_rows(const ExpansionRows& rows);
  void scatter_expansion_bf16(const ExpansionRows& rows, bool as_bf16);
  void scatter_expansion_f32(const ExpansionRows& rows);
  void run_attention(AttentionPath path, const AttentionParams& params, StepReport& report);
  std::string linear_name(const PackedLinear& weight) const;  // "wkv_a"
  void run_linear(const float* x, int64_t x_stride, const PackedLinear& weight, int64_t rows, float* y,
                  int64_t y_stride, const uint16_t* x_bf16 = nullptr, uint16_t* y_bf16 = nullptr);

  ModelArgs model_;
  HeadShard shard_;
  LayerWeights weights_;  // the norms and wkv_b (the absorb formulation's per-head GEMMs) stay fp32 here
  RunConfig run_;
  // The linear layers, prepared once (the fp32 copies in weights_ are released).
  PackedLinear wq_, wq_a_, wq_b_, wkv_a_, wkv_b_, wo_;
  PackedLinear group_wkv_b_;          // context parallelism: wkv_b of every head of the group, for naive
  std::vector<int64_t> group_heads_;  // context parallelism: the heads of each rank of the group
  int64_t group_heads_max_ = 0;       // the most of them: the exchanged blocks' heads
  bool round_bf16_ = false;
  RopeTable rope_table_;
  int64_t latent_width_ = 0;  // C + dr: one cache row, [c_n | k_pe]
  Communicator* context_group_ = nullptr;
  LatentCache cache_;
  std::vector<int32_t> step_block_table_;  // the step's rows of the cache's block tables
  PagedLatentView step_cache_;             // the step's view of the cache
  int64_t expanded_rows_ = 0;              // naive: cache rows the last step expanded
  double step_linear_ms_ = 0.0;            // this step's time in run_linear so far
  std::vector<TracedTensor> step_trace_;   // what this step wrote, in order

  // Per-step buffers, grown on demand and reused.
  AlignedVector<uint16_t> x_bf16_;         // [B*S, D] bf16 mode: the input rounded to bf16, once for wq(_a) and wkv_a
  AlignedVector<float> q_latent_;          // fp32: [B*S, q_lora_rank]
  AlignedVector<uint16_t> q_latent_bf16_;  // bf16: the same as bf16 numbers
  AlignedVector<float> q_;                 // [B*S, Hl, dq]
  AlignedVector<uint16_t> q_bf16_;         // bf16 on the AMX fast path: q as bf16 numbers, instead of q_
  AlignedVector<float> kv_;                // [B*S, C + dr]
  AlignedVector<float> q_absorbed_;        // absorb: [B*S, Hl, C + dr] = [Wk^T q_nope | q_pe]
  AlignedVector<float> o_latent_;          // absorb: [B*S, Hl, C]
  AlignedVector<float> latent_f32_;        // naive: [rows, C + dr] the cached rows, dense, fp32
  AlignedVector<uint16_t> latent_bf16_;    // naive, bf16 mode: [rows, C] their c_n as bf16 numbers
  AlignedVector<uint16_t> kv_expanded_bf16_;  // naive, bf16 mode: kv_expanded_ as bf16 numbers
  AlignedVector<float> kv_expanded_;          // naive: [B, kv_len, Hl, dn + dv] = wkv_b c_n
  AlignedVector<float> keys_;                 // naive: [B, Hl, kv_len, dq] = [k_nope | k_pe]
  AlignedVector<float> values_;               // naive: [B, Hl, kv_len, dv]
  AlignedVector<uint16_t> key_bf16_;          // naive, bf16 on the AMX fast path: keys_ as bf16 numbers
  AlignedVector<uint16_t> value_bf16_;        // naive, bf16 on the AMX fast path: values_ as bf16 numbers
  AlignedVector<float> o_;                    // [B*S, Hl*dv]
  AlignedVector<uint16_t> o_bits_;            // bf16 on the AMX fast path: o as bf16 numbers, instead of o_
  // Context parallelism: this rank's rows of the step's latent, the group's absorbed queries, the
  // partial outputs and log-sum-exps this rank computed for each rank, and those it received.
  ShardRows own_rows_;
  AlignedVector<float> group_queries_, partial_out_, partial_lse_, received_out_, received_lse_;
  AlignedVector<float> padded_queries_;  // this rank's queries in a block of group_heads_max_ heads
};

}  // namespace mla
