// What one rank's layer step costs in arithmetic and memory traffic, derived from the shapes alone
// (docs/design.md, One step of one rank). mla_bench divides these by measured times to report GFLOP/s
// and GB/s; tests/test_op_count.cpp checks the GEMM part against the FLOPs the layer's GEMMs
// actually execute.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/model_args.h"
#include "runtime/layer/attention_plan.h"

namespace mla {

// One GEMM of the step: batch x ([m, k] times [k, n]), 2 m n k FLOPs each.
struct GemmShape {
  std::string name;
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  bool replicated = false;      // every rank computes the same product (not split by heads)
  bool prepared_weight = true;  // y = x W^T with a weight prepared once (PackedLinear); false: per-head gemm()

  double flop() const { return 2.0 * static_cast<double>(batch) * static_cast<double>(m * n) * static_cast<double>(k); }
};

struct StepShapeArgs {
  int64_t n_local_heads = 0;
  int64_t batch = 0;
  int64_t seq = 0;        // new tokens per sequence
  int64_t start_pos = 0;  // tokens already cached
  Formulation formulation = Formulation::Absorb;
  int64_t weight_element_bytes = 4;  // the compute copies' element size (fp32 on the CPU)
  int64_t activation_element_bytes = 4;
};

struct StepCost {
  // The step's GEMMs outside the attention core: projections (wq or wq_a/wq_b, wkv_a, wo) and the
  // formulation's own products (naive: K/V expansion of the cache by wkv_b; absorb: Wk folded
  // into the queries, Wv into the outputs).
  std::vector<GemmShape> gemms;
  double gemm_flop = 0;         // sum over gemms
  double replicated_flop = 0;   // the part of gemm_flop every rank repeats (wq_a, wkv_a)
  double formulation_flop = 0;  // the part of gemm_flop that is the fold (absorb) or expansion (naive)
  double attention_flop = 0;    // scores and value products over the (query, key) pairs attended to
  double norm_rope_flop = 0;    // RMSNorm, RoPE, softmax: small, counted so the total is honest
  double flop() const { return gemm_flop + attention_flop + norm_rope_flop; }

  // Compulsory memory traffic: each weight read once, the cached latent rows read once, the new
  // cache rows written, x read and y written, and (naive) the expanded K/V written and read back.
  double weight_bytes = 0;
  double cache_bytes = 0;
  double activation_bytes = 0;
  double expanded_kv_bytes = 0;
  double bytes() const { return weight_bytes + cache_bytes + activation_bytes + expanded_kv_bytes; }
};

StepCost step_cost(const ModelArgs& model, const StepShapeArgs& shape);

}  // namespace mla
