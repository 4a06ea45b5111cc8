#include "runtime/layer/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "runtime/base/errors.h"
#include "runtime/base/units.h"
#include "runtime/layer/latent_cache.h"

namespace mla {

namespace {

constexpr double kFloat = sizeof(float);

double weight_elements(const ModelArgs& m, double heads) {
  const double dim = static_cast<double>(m.dim), q_rank = static_cast<double>(m.q_lora_rank);
  const double dq = static_cast<double>(m.qk_head_dim());
  const double q = m.q_lora_rank == 0 ? heads * dq * dim : q_rank * dim + q_rank + heads * dq * q_rank;
  const double latent_rank = static_cast<double>(m.kv_lora_rank);
  const double latent = (latent_rank + static_cast<double>(m.qk_rope_head_dim)) * dim + latent_rank;
  return q + latent + heads * static_cast<double>(m.qk_nope_head_dim + m.v_head_dim) * latent_rank +
         dim * heads * static_cast<double>(m.v_head_dim);
}

// mla_layer.h's per-step buffers for a step of `seq` tokens at kv length `kv_len`, both
// formulations, plus the runner's step input and output.
double step_elements(const ModelArgs& m, const RunConfig& run, double heads, double batch, double seq, double kv_len,
                     int threads) {
  const double latent = static_cast<double>(m.kv_lora_rank + m.qk_rope_head_dim);
  const double per_token = 3.0 * static_cast<double>(m.dim) + static_cast<double>(m.q_lora_rank) +
                           heads * (static_cast<double>(m.qk_head_dim() + m.kv_lora_rank + m.v_head_dim) + latent) +
                           latent;
  // naive: the cached rows gathered (fp32, and c_n as bf16) for the expansion GEMM, the expansion
  // [k_nope | v], the keys and (CPU) the values gathered per head.
  const double naive = batch * kv_len *
                       (latent + static_cast<double>(m.kv_lora_rank) / 2.0 +
                        heads * static_cast<double>(m.qk_nope_head_dim + 2 * m.v_head_dim + m.qk_head_dim()));
  const double scores = std::max(static_cast<double>(run.score_chunk_bytes) / kFloat,
                                 threads * (kv_len + static_cast<double>(m.kv_lora_rank)));
  return batch * seq * per_token + naive + scores;
}

// Under the split, a run's gathered queries and exchanged parts, held within run.score_chunk_bytes
// (context_run_tokens) beside the score buffers.
double split_run_bytes(const RunConfig& run, int64_t context_parallel) {
  return context_parallel > 1 ? static_cast<double>(run.score_chunk_bytes) : 0.0;
}

}  // namespace

std::string MemoryPlan::describe() const {
  return format_bytes(total()) + " (weights " + format_bytes(weights_bytes) + ", kv cache " +
         format_bytes(kv_cache_bytes) + ", input and output " + format_bytes(activation_bytes) + ", step buffers " +
         format_bytes(workspace_bytes) + ")";
}

// The weights and the latent cache, whatever the schedule.
MemoryPlan fixed_memory(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, int64_t context_parallel) {
  MemoryPlan plan;
  plan.weights_bytes = weight_elements(m, static_cast<double>(shard.n_local_heads)) * kFloat;
  const LatentCacheShape cache =
      latent_cache_shape(m, run.kv_cache, run.compute_dtype == ComputeDType::BF16, context_parallel);
  plan.kv_cache_bytes = static_cast<double>(cache.pages) * static_cast<double>(cache.page_bytes()) +
                        static_cast<double>(m.max_seq_len) * static_cast<double>(m.qk_rope_head_dim) * kFloat;
  return plan;
}

MemoryPlan plan_memory(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, int64_t batch, int64_t tokens,
                       const std::vector<int64_t>& steps, int threads, int64_t context_parallel) {
  const double heads = static_cast<double>(shard.n_local_heads);
  MemoryPlan plan = fixed_memory(m, run, shard, context_parallel);
  plan.activation_bytes =
      2.0 * static_cast<double>(batch) * static_cast<double>(tokens) * static_cast<double>(m.dim) * kFloat;
  double start_pos = 0;
  for (const int64_t step : steps) {
    const double seq = static_cast<double>(step);
    plan.workspace_bytes =
        std::max(plan.workspace_bytes,
                 step_elements(m, run, heads, static_cast<double>(batch), seq, start_pos + seq, threads) * kFloat);
    start_pos += seq;
  }
  plan.workspace_bytes += split_run_bytes(run, context_parallel);
  return plan;
}

MemoryPlan plan_request_memory(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, int64_t total_tokens,
                               int threads, int64_t context_parallel) {
  MemoryPlan plan = fixed_memory(m, run, shard, context_parallel);
  plan.activation_bytes = 2.0 * static_cast<double>(total_tokens) * static_cast<double>(m.dim) * kFloat;
  const double slots = static_cast<double>(m.max_batch_size);
  plan.workspace_bytes =
      step_elements(m, run, static_cast<double>(shard.n_local_heads), slots,
                    static_cast<double>(run.max_step_tokens) / slots, static_cast<double>(m.max_seq_len), threads) *
          kFloat +
      split_run_bytes(run, context_parallel);
  return plan;
}

int64_t available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    std::istringstream fields(line);
    std::string key;
    int64_t kilobytes = 0;
    if (fields >> key >> kilobytes && key == "MemAvailable:") return kilobytes * 1024;
  }
  return -1;
}

void check_memory_fits(const MemoryPlan& plan, int ranks_on_node, int64_t available_bytes) {
  if (available_bytes < 0) return;
  const double needed = plan.total() * ranks_on_node;
  if (needed <= static_cast<double>(available_bytes)) return;
  throw UserError("not enough memory: each rank needs " + plan.describe() + ", " + std::to_string(ranks_on_node) +
                  " rank(s) on this node need " + format_bytes(needed) + ", but the node has " +
                  format_bytes(static_cast<double>(available_bytes)) +
                  " available (MemAvailable); lower model.max_seq_len, "
                  "model.max_batch_size, the input, or use more nodes");
}

}  // namespace mla
