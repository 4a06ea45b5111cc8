// Which heads a rank owns (docs/design.md, Weights: rank r of W owns head block r).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mla {

struct HeadShard {
  int rank = 0;
  int world = 1;
  int64_t n_heads = 0;        // H, all heads of the model
  int64_t head_begin = 0;     // first head this rank owns
  int64_t n_local_heads = 0;  // Hl

  bool is_whole() const { return head_begin == 0 && n_local_heads == n_heads; }
};

// Even split: rank r owns [r*H/W, (r+1)*H/W); H % W != 0 is refused unless uneven is set, in
// which case the first H % W ranks take one head more. Throws std::invalid_argument with the
// reason on a bad combination (the caller adds the config key to the message).
HeadShard shard_heads(int64_t n_heads, int world, int rank, bool uneven);
// The same for a job's config: a bad combination is a UserError naming model.n_heads.
HeadShard shard_model_heads(int64_t n_heads, int world, int rank, bool uneven);

std::string describe(const HeadShard& shard);  // "heads 0-15 of 16 (rank 0 of 1)"

// The heads of each rank of `shard`'s context group (parallel.context_parallel: group_size
// consecutive ranks of the job), in group order; uneven where the job's split is.
std::vector<int64_t> context_group_heads(const HeadShard& shard, int64_t group_size);

}  // namespace mla
