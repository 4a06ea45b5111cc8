#include "runtime/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "runtime/errors.h"

namespace mla {

namespace {

constexpr int64_t kFloat = sizeof(float);

std::string gigabytes(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GB", static_cast<double>(bytes) / 1e9);
  return text;
}

int64_t weight_elements(const ModelArgs& m, int64_t heads) {
  const int64_t dq = m.qk_head_dim();
  const int64_t q = m.q_lora_rank == 0 ? heads * dq * m.dim
                                       : m.q_lora_rank * m.dim + m.q_lora_rank + heads * dq * m.q_lora_rank;
  const int64_t latent = (m.kv_lora_rank + m.qk_rope_head_dim) * m.dim + m.kv_lora_rank;
  return q + latent + heads * (m.qk_nope_head_dim + m.v_head_dim) * m.kv_lora_rank + m.dim * heads * m.v_head_dim;
}

// mla_layer.h's per-step buffers for a step of `seq` tokens at kv length `kv_len`, both
// formulations, plus the runner's step input and output.
int64_t step_elements(const ModelArgs& m, const RunConfig& run, int64_t heads, int64_t batch, int64_t seq,
                      int64_t kv_len, int threads) {
  const int64_t tokens = batch * seq;
  const int64_t latent = m.kv_lora_rank + m.qk_rope_head_dim;
  const int64_t per_token = 3 * m.dim + m.q_lora_rank + heads * m.qk_head_dim() + latent + heads * latent +
                            heads * m.kv_lora_rank + heads * m.v_head_dim;
  const int64_t naive = batch * kv_len * heads * (m.qk_nope_head_dim + m.v_head_dim + m.qk_head_dim());
  const int64_t scores = std::max<int64_t>(run.score_chunk_bytes / kFloat, threads * (kv_len + m.kv_lora_rank));
  return tokens * per_token + naive + scores;
}

}  // namespace

std::string MemoryPlan::describe() const {
  return gigabytes(total()) + " (weights " + gigabytes(weights_bytes) + ", kv cache " + gigabytes(kv_cache_bytes) +
         ", input and output " + gigabytes(activation_bytes) + ", step buffers " + gigabytes(workspace_bytes) + ")";
}

MemoryPlan plan_memory(const ModelArgs& m, const RunConfig& run, const HeadShard& shard, int64_t batch, int64_t tokens,
                       const std::vector<int64_t>& steps, int threads) {
  MemoryPlan plan;
  plan.weights_bytes = weight_elements(m, shard.n_local_heads) * kFloat;
  plan.kv_cache_bytes = (m.max_batch_size * m.max_seq_len * (m.kv_lora_rank + m.qk_rope_head_dim) +
                         m.max_seq_len * m.qk_rope_head_dim) * kFloat;
  plan.activation_bytes = 2 * batch * tokens * m.dim * kFloat;
  int64_t start_pos = 0;
  for (const int64_t seq : steps) {
    const int64_t elements = step_elements(m, run, shard.n_local_heads, batch, seq, start_pos + seq, threads);
    plan.workspace_bytes = std::max(plan.workspace_bytes, elements * kFloat);
    start_pos += seq;
  }
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
  const int64_t needed = plan.total() * ranks_on_node;
  if (needed <= available_bytes) return;
  throw UserError("not enough memory: each rank needs " + plan.describe() + ", " + std::to_string(ranks_on_node) +
                  " rank(s) on this node need " + gigabytes(needed) + ", but the node has " +
                  gigabytes(available_bytes) + " available (MemAvailable); lower model.max_seq_len, "
                  "model.max_batch_size, the input, or use more nodes");
}

}  // namespace mla
