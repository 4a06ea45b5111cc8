#include "runtime/layer/attention_layout.h"

#include <algorithm>

namespace mla {

namespace {

AttentionParams common_params(const ModelArgs& model, const AttentionStep& step) {
  AttentionParams p;
  p.batch = step.batch;
  p.seq = step.seq;
  p.n_heads = step.n_heads;
  p.start_pos = step.start_pos;
  p.kv_len = step.start_pos + step.seq;
  p.scale = static_cast<float>(model.softmax_scale());
  p.mask = step.mask;
  p.mask_stride = step.mask_stride;
  p.round_to_bf16 = step.round_to_bf16;
  if (step.ragged != nullptr) {
    const RaggedIndex& index = *step.ragged;
    p.batch = index.sequences();
    p.seq = 0;
    p.kv_len = 0;
    for (int64_t b = 0; b < p.batch; ++b) {
      p.seq = std::max(p.seq, index.new_tokens[b]);
      p.kv_len = std::max(p.kv_len, index.start_pos[b] + index.new_tokens[b]);
    }
    p.start_pos = 0;
    p.seq_start_pos = index.start_pos.data();
    p.seq_new_tokens = index.new_tokens.data();
    p.seq_token_offset = index.token_offset.data();
  }
  return p;
}

}  // namespace

AttentionParams absorb_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q_absorbed,
                                        const float* kv_cache, float* o_latent) {
  const int64_t C = model.kv_lora_rank;
  const int64_t latent_width = C + model.qk_rope_head_dim;
  AttentionParams p = common_params(model, step);
  p.q = q_absorbed;
  p.q_token_stride = step.n_heads * latent_width;
  p.q_head_stride = latent_width;
  p.keys = p.values = kv_cache;
  p.key_batch_stride = p.value_batch_stride = model.max_seq_len * latent_width;
  p.key_pos_stride = p.value_pos_stride = latent_width;
  p.key_head_stride = p.value_head_stride = 0;  // one latent row serves every head
  p.score_dim = latent_width;
  p.score_split = C;
  p.value_dim = C;
  p.out = o_latent;
  p.out_token_stride = step.n_heads * C;
  p.out_head_stride = C;
  return p;
}

AttentionParams naive_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q,
                                       const float* keys, const float* kv_expanded, float* o) {
  const int64_t heads = step.n_heads;
  const int64_t dq = model.qk_head_dim();
  const int64_t dn = model.qk_nope_head_dim;
  const int64_t dv = model.v_head_dim;
  const int64_t kv_width = heads * (dn + dv);
  AttentionParams p = common_params(model, step);
  p.q = q;
  p.q_token_stride = heads * dq;
  p.q_head_stride = dq;
  p.keys = keys;
  p.key_batch_stride = p.kv_len * heads * dq;
  p.key_pos_stride = heads * dq;
  p.key_head_stride = dq;
  p.values = kv_expanded != nullptr ? kv_expanded + dn : nullptr;  // null: the caller gives bits instead
  p.value_batch_stride = p.kv_len * kv_width;
  p.value_pos_stride = kv_width;
  p.value_head_stride = dn + dv;
  p.score_dim = dq;
  p.value_dim = dv;
  p.out = o;
  p.out_token_stride = heads * dv;
  p.out_head_stride = dv;
  return p;
}

AttentionParams naive_head_major_attention_params(const ModelArgs& model, const AttentionStep& step, const float* q,
                                                  const float* keys, const float* values, float* o) {
  AttentionParams p = naive_attention_params(model, step, q, keys, values, o);
  const int64_t dq = model.qk_head_dim();
  const int64_t dv = model.v_head_dim;
  p.key_batch_stride = step.n_heads * p.kv_len * dq;
  p.key_pos_stride = dq;
  p.key_head_stride = p.kv_len * dq;
  p.values = values;
  p.value_batch_stride = step.n_heads * p.kv_len * dv;
  p.value_pos_stride = dv;
  p.value_head_stride = p.kv_len * dv;
  return p;
}

}  // namespace mla
