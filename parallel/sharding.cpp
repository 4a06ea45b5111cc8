#include "parallel/sharding.h"

#include <stdexcept>

#include "runtime/base/errors.h"

namespace mla {

HeadShard shard_heads(int64_t n_heads, int world, int rank, bool uneven) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument("rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world));
  }
  if (n_heads < world) {
    throw std::invalid_argument("n_heads " + std::to_string(n_heads) + " is less than the world size " +
                                std::to_string(world) + ": some rank would own no head");
  }
  const int64_t remainder = n_heads % world;
  if (remainder != 0 && !uneven) {
    throw std::invalid_argument("n_heads " + std::to_string(n_heads) + " is not divisible by the world size " +
                                std::to_string(world) + " (set parallel.uneven_heads: true to allow it)");
  }
  HeadShard shard;
  shard.rank = rank;
  shard.world = world;
  shard.n_heads = n_heads;
  const int64_t base = n_heads / world;
  shard.n_local_heads = base + (rank < remainder ? 1 : 0);
  shard.head_begin = rank * base + (rank < remainder ? rank : remainder);
  return shard;
}

std::string describe(const HeadShard& shard) {
  return "heads " + std::to_string(shard.head_begin) + "-" +
         std::to_string(shard.head_begin + shard.n_local_heads - 1) + " of " + std::to_string(shard.n_heads) +
         " (rank " + std::to_string(shard.rank) + " of " + std::to_string(shard.world) + ")";
}

HeadShard shard_model_heads(int64_t n_heads, int world, int rank, bool uneven) {
  try {
    return shard_heads(n_heads, world, rank, uneven);
  } catch (const std::invalid_argument& error) {
    throw UserError(std::string("model.n_heads: ") + error.what());
  }
}

std::vector<int64_t> context_group_heads(const HeadShard& shard, int64_t group_size) {
  const int first_rank = shard.rank - static_cast<int>(shard.rank % group_size);
  std::vector<int64_t> heads;
  for (int64_t r = 0; r < group_size; ++r) {
    heads.push_back(shard_heads(shard.n_heads, shard.world, first_rank + static_cast<int>(r), true).n_local_heads);
  }
  return heads;
}

}  // namespace mla
