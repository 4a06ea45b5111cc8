// The bytes a rank needs, computed from the config before anything large is allocated, so that a
// configuration that cannot fit is refused up front instead of dying half-way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/sharding.h"
#include "runtime/io/config.h"

namespace mla {

// In double: a config can ask for sizes whose product overflows int64 (2^20 sequences of 2^26
// positions), and such a config must be refused here, not wrap around to a small number.
struct MemoryPlan {
  double weights_bytes = 0;     // this rank's fp32 compute copies
  double kv_cache_bytes = 0;    // the latent cache's pool (run.kv_cache) plus the RoPE table
  double activation_bytes = 0;  // x and y of the whole run
  double workspace_bytes = 0;   // the largest step's buffers, both formulations and paths counted

  double total() const { return weights_bytes + kv_cache_bytes + activation_bytes + workspace_bytes; }
  std::string describe() const;  // "1.2 GB (weights 0.9 GB, kv cache 0.3 GB, ...)"
};

// context_parallel: the rank keeps its share of the cache (parallel.context_parallel).
MemoryPlan plan_memory(const ModelArgs& model, const RunConfig& run, const HeadShard& shard, int64_t batch,
                       int64_t tokens, const std::vector<int64_t>& steps, int threads, int64_t context_parallel = 1);
// Continuous batching: `total_tokens` input (and output) tokens over every request; a step carries
// at most run.max_step_tokens tokens of up to max_batch_size sequences of up to max_seq_len positions.
MemoryPlan plan_request_memory(const ModelArgs& model, const RunConfig& run, const HeadShard& shard,
                               int64_t total_tokens, int threads, int64_t context_parallel = 1);

// MemAvailable of /proc/meminfo in bytes, or -1 when it cannot be read.
int64_t available_memory_bytes();

// Throws UserError with both numbers when `ranks_on_node` ranks of this plan need more than
// `available_bytes` (ignored when < 0).
void check_memory_fits(const MemoryPlan& plan, int ranks_on_node, int64_t available_bytes);

}  // namespace mla
