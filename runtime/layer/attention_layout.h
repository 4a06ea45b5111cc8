// Where a step's attention reads and writes, in each formulation. The CPU and the CUDA layer lay
// their buffers out alike, so both build their AttentionParams here.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"
#include "runtime/io/model_args.h"
#include "runtime/layer/ragged_step.h"

namespace mla {

struct AttentionStep {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t start_pos = 0;
  int64_t n_heads = 0;  // this rank's heads
  const float* mask = nullptr;
  int64_t mask_stride = 0;
  bool round_to_bf16 = false;
  // A ragged step (batch, seq and start_pos then unused): its sequences with tokens. The naive
  // buffers hold each sequence's positions padded to the longest, kv_len = index->max_kv_len.
  const RaggedIndex* ragged = nullptr;

  int64_t sequences() const { return ragged != nullptr ? ragged->sequences() : batch; }
  int64_t tokens() const {
    return ragged != nullptr ? static_cast<int64_t>(ragged->token_position.size()) : batch * seq;
  }
  // Positions sequence b attends to, its new tokens included.
  int64_t kv_len(int64_t b) const {
    return ragged != nullptr ? ragged->start_pos[b] + ragged->new_tokens[b] : start_pos + seq;
  }
};

// absorb: q_absorbed [B*S, Hl, C + dr], keys = values = the latent cache
// [max_batch_size, max_seq_len, C + dr] shared by every head, out = o_latent [B*S, Hl, C]. The
// CPU layer passes no kv_cache and sets latent_pages (its cache is paged).
AttentionParams absorb_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q_absorbed,
                                        const float* kv_cache, float* o_latent);

// naive: q [B*S, Hl, dq], keys [B, kv_len, Hl, dq], values inside kv_expanded
// [B, kv_len, Hl, dn + dv] (after each head's dn key values), out = o [B*S, Hl, dv].
AttentionParams naive_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q,
                                       const float* keys, const float* kv_expanded, float* o);

// naive, as the CPU layer lays it out: q [B*S, Hl, dq], keys [B, Hl, kv_len, dq], values
// [B, Hl, kv_len, dv], out = o [B*S, Hl, dv]. One head's keys and values are contiguous: the CPU's
// fused kernel reads them once per block of queries, and in the layout above consecutive
// positions sit Hl * dq or Hl * (dn + dv) floats apart, multiples of 4 KiB that map a head's rows
// onto the same cache sets and evict each other.
AttentionParams naive_head_major_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q,
                                                  const float* keys, const float* values, float* o);

}  // namespace mla
