#include "runtime/layer/op_count.h"

namespace mla {

StepCost step_cost(const ModelArgs& model, const StepShapeArgs& shape) {
  const int64_t tokens = shape.batch * shape.seq;
  const int64_t kv_len = shape.start_pos + shape.seq;
  const int64_t heads = shape.n_local_heads;
  const int64_t C = model.kv_lora_rank;
  const int64_t dq = model.qk_head_dim();
  const int64_t dn = model.qk_nope_head_dim;
  const int64_t dv = model.v_head_dim;
  const int64_t latent_width = C + model.qk_rope_head_dim;
  StepCost cost;

  // Projections, y = x W^T: [tokens, in] x [in, out].
  const auto projection = [&](const char* name, int64_t in, int64_t out, bool replicated) {
    cost.gemms.push_back({name, tokens, out, in, 1, replicated});
    cost.weight_bytes += static_cast<double>(in * out * shape.weight_element_bytes);
  };
  if (model.q_lora_rank == 0) {
    projection("wq", model.dim, heads * dq, false);
  } else {
    projection("wq_a", model.dim, model.q_lora_rank, true);
    projection("wq_b", model.q_lora_rank, heads * dq, false);
  }
  projection("wkv_a", model.dim, latent_width, true);
  projection("wo", heads * dv, model.dim, false);
  // wkv_b is read by both formulations: whole for the expansion, or as Wk and Wv per head.
  cost.weight_bytes += static_cast<double>(heads * (dn + dv) * C * shape.weight_element_bytes);

  const size_t projections = cost.gemms.size();
  if (shape.formulation == Formulation::Naive) {
    // Every cached position of every sequence expanded to per-head k_nope and v.
    cost.gemms.push_back({"wkv_b expand", kv_len, heads * (dn + dv), C, shape.batch, false});
    const double keys_and_values = static_cast<double>(shape.batch * kv_len * heads * (dq + dn + dv));
    cost.expanded_kv_bytes = 2.0 * keys_and_values * static_cast<double>(shape.activation_element_bytes);
  } else {
    cost.gemms.push_back({"Wk fold", tokens, C, dn, heads, false, false});
    cost.gemms.push_back({"Wv unfold", tokens, dv, C, heads, false, false});
  }
  for (size_t i = 0; i < cost.gemms.size(); ++i) {
    const double flop = cost.gemms[i].flop();
    cost.gemm_flop += flop;
    if (cost.gemms[i].replicated) cost.replicated_flop += flop;
    if (i >= projections) cost.formulation_flop += flop;
  }

  StepShape step;
  step.batch = shape.batch;
  step.seq = shape.seq;
  step.start_pos = shape.start_pos;
  step.n_local_heads = heads;
  const double pairs = static_cast<double>(step.attended_pairs()) * static_cast<double>(heads);
  // Per (query, head, key): a score dot product and a value accumulation.
  const double pair_width = shape.formulation == Formulation::Naive
                                ? static_cast<double>(dq + dv)
                                : static_cast<double>(2 * C + model.qk_rope_head_dim);
  cost.attention_flop = 2.0 * pairs * pair_width;
  // Softmax: max, exp, sum, scale per pair (counted as 4); RMSNorm ~4 per element; RoPE 6 per pair.
  const double rope_pairs = static_cast<double>(tokens * (heads + 1) * model.qk_rope_head_dim / 2);
  const double norm_elements = static_cast<double>(tokens * (C + model.q_lora_rank));
  cost.norm_rope_flop = 4.0 * pairs + 4.0 * norm_elements + 6.0 * rope_pairs;

  cost.cache_bytes =
      static_cast<double>(shape.batch * (kv_len + shape.seq) * latent_width * shape.activation_element_bytes);
  cost.activation_bytes = static_cast<double>(2 * tokens * model.dim * shape.activation_element_bytes);
  return cost;
}

}  // namespace mla
