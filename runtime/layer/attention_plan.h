// Which attention path and formulation a step uses, and why (docs/design.md, The fast path and
// the standard path). Each rank decides from its own local shapes; the reason is logged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/config.h"

namespace mla {

enum class AttentionPath { Fast, Standard };
enum class Formulation { Naive, Absorb };

const char* to_string(AttentionPath value);
const char* to_string(Formulation value);

struct StepShape {
  int64_t batch = 0;
  int64_t seq = 0;        // S new tokens
  int64_t start_pos = 0;  // p
  int64_t n_local_heads = 0;
  bool has_mask = false;  // an explicit additive mask instead of the causal rule

  int64_t kv_len() const { return start_pos + seq; }
  // (query, key) pairs attended to over the batch: causal rows see p + s + 1 positions.
  int64_t attended_pairs() const;
};

struct StepPlan {
  AttentionPath path = AttentionPath::Fast;
  Formulation formulation = Formulation::Absorb;
  double naive_flops = 0.0;   // attention FLOPs of each formulation for this step
  double absorb_flops = 0.0;  // (the projections common to both are left out)
  std::string reason;
};

// naive: expand K and V of every cached position from the latent cache, then attend over dq and
// dv per head. absorb: fold Wk into the queries and Wv into the outputs, attend over C + dr.
double naive_attention_flops(const ModelArgs& model, const StepShape& shape);
double absorb_attention_flops(const ModelArgs& model, const StepShape& shape);

StepPlan plan_step(const ModelArgs& model, const RunConfig& run, const StepShape& shape);

// A ragged step, one StepShape (batch 1) per sequence with tokens: one plan for the whole step,
// since its kernels run once over every sequence. The formulation whose FLOPs summed over the
// sequences are fewer; the fast path when the longest sequence fits it.
StepPlan plan_ragged_step(const ModelArgs& model, const RunConfig& run, const std::vector<StepShape>& sequences);

}  // namespace mla
