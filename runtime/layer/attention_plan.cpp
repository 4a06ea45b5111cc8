#include "runtime/layer/attention_plan.h"

#include <algorithm>
#include <cstdio>

#include "kernels/cpu/attention.h"

namespace mla {

const char* to_string(AttentionPath value) { return value == AttentionPath::Fast ? "fast" : "standard"; }
const char* to_string(Formulation value) { return value == Formulation::Naive ? "naive" : "absorb"; }

int64_t StepShape::attended_pairs() const {
  if (has_mask) return batch * seq * kv_len();
  return batch * (seq * start_pos + seq * (seq + 1) / 2);
}

double naive_attention_flops(const ModelArgs& m, const StepShape& shape) {
  const double heads = static_cast<double>(shape.n_local_heads);
  const double pairs = static_cast<double>(shape.attended_pairs());
  const double expand = 2.0 * static_cast<double>(shape.batch * shape.kv_len()) * static_cast<double>(m.kv_lora_rank) *
                        heads * static_cast<double>(m.qk_nope_head_dim + m.v_head_dim);
  return expand + 2.0 * heads * pairs * static_cast<double>(m.qk_head_dim() + m.v_head_dim);
}

double absorb_attention_flops(const ModelArgs& m, const StepShape& shape) {
  const double heads = static_cast<double>(shape.n_local_heads);
  const double pairs = static_cast<double>(shape.attended_pairs());
  const double tokens = static_cast<double>(shape.batch * shape.seq);
  const double latent = static_cast<double>(m.kv_lora_rank);
  const double fold_in_out = 2.0 * tokens * heads * latent * static_cast<double>(m.qk_nope_head_dim + m.v_head_dim);
  return fold_in_out + 2.0 * heads * pairs * (2.0 * latent + static_cast<double>(m.qk_rope_head_dim));
}

namespace {

std::string format(const char* pattern, double a, double b) {
  char text[160];
  std::snprintf(text, sizeof(text), pattern, a, b);
  return text;
}

// kv_len: the longest sequence's; new_tokens: the most of any sequence. Under fast_path_max_len
// auto a decode-shaped absorb step (at most kDecodeMaxNewTokens new tokens a sequence) is the fused
// kernel's at any kv_len: measured faster than the standard path there on the CPU
// (docs/performance.md, Long-context decode), and on the GPU served by the split-KV decode kernel.
void choose_path(const RunConfig& run, int64_t kv_len, int64_t new_tokens, bool has_mask, StepPlan& plan) {
  const std::string length = "kv_len " + std::to_string(kv_len);
  const std::string limit =
      "fast_path_max_len " + std::to_string(run.fast_path_max_len) + (run.fast_path_auto ? " (auto)" : "");
  const bool decode_any_length = run.fast_path_auto && new_tokens <= kDecodeMaxNewTokens && !has_mask &&
                                 plan.formulation == Formulation::Absorb && kv_len > run.fast_path_max_len;
  const bool fits = kv_len <= run.fast_path_max_len || decode_any_length;
  if (run.attention == AttentionChoice::Standard) {
    plan.path = AttentionPath::Standard;
    plan.reason = "run.attention: standard";
  } else if (has_mask) {
    plan.path = AttentionPath::Standard;
    plan.reason = std::string(run.attention == AttentionChoice::Fast ? "fast path requested, but " : "") +
                  "an explicit mask needs the standard path";
  } else if (!fits) {
    plan.path = AttentionPath::Standard;
    plan.reason =
        std::string(run.attention == AttentionChoice::Fast ? "fast path requested, but " : "") + length + " > " + limit;
  } else {
    plan.path = AttentionPath::Fast;
    plan.reason = run.attention == AttentionChoice::Fast ? "run.attention: fast"
                  : decode_any_length
                      ? length + " past " + limit + ", but a decode step: auto takes the fused kernel at any length"
                      : length + " <= " + limit;
  }
}

// The formulation, and the reason's part that says why.
std::string choose_formulation(const RunConfig& run, StepPlan& plan) {
  const std::string cost =
      format("naive %.3g GFLOP, absorb %.3g GFLOP", plan.naive_flops * 1e-9, plan.absorb_flops * 1e-9);
  if (run.formulation == FormulationChoice::Naive || run.formulation == FormulationChoice::Absorb) {
    plan.formulation = run.formulation == FormulationChoice::Naive ? Formulation::Naive : Formulation::Absorb;
    return std::string("run.formulation: ") + to_string(plan.formulation) + " (" + cost + ")";
  }
  plan.formulation = plan.naive_flops < plan.absorb_flops ? Formulation::Naive : Formulation::Absorb;
  return std::string(to_string(plan.formulation)) + " is cheaper (" + cost + ")";
}

}  // namespace

StepPlan plan_step(const ModelArgs& model, const RunConfig& run, const StepShape& shape) {
  StepPlan plan;
  plan.naive_flops = naive_attention_flops(model, shape);
  plan.absorb_flops = absorb_attention_flops(model, shape);
  const std::string formulation_reason = choose_formulation(run, plan);
  choose_path(run, shape.kv_len(), shape.seq, shape.has_mask, plan);
  plan.reason += "; " + formulation_reason;
  return plan;
}

StepPlan plan_ragged_step(const ModelArgs& model, const RunConfig& run, const std::vector<StepShape>& sequences) {
  StepPlan plan;
  int64_t longest = 0, most_tokens = 0;
  for (const StepShape& sequence : sequences) {
    plan.naive_flops += naive_attention_flops(model, sequence);
    plan.absorb_flops += absorb_attention_flops(model, sequence);
    longest = std::max(longest, sequence.kv_len());
    most_tokens = std::max(most_tokens, sequence.seq);
  }
  const std::string formulation_reason = choose_formulation(run, plan);
  choose_path(run, longest, most_tokens, false, plan);
  if (sequences.size() > 1) plan.reason = "longest " + plan.reason;
  plan.reason += "; " + formulation_reason;
  return plan;
}

}  // namespace mla
