// One rank's latent cache (docs/design.md, The latent cache): rows [c_n | k_pe] in the dtype of
// run.kv_cache, kept in pages of one pool. A sequence slot holds the pages its positions need;
// the dense layout gives every slot one page of max_seq_len rows, the paged layout hands out
// page_size-row pages as sequences grow and takes them back when a slot is released.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/aligned_vector.h"
#include "kernels/cpu/paged_latent.h"
#include "runtime/base/errors.h"
#include "runtime/io/config.h"
#include "runtime/layer/ragged_step.h"

namespace mla {

// The paged pool has no free page for a step (a bigger run.kv_cache.pages, or fewer sequences at
// once, fixes it). Continuous batching checks pages_free() before it admits a request, so a run
// only meets this when one request alone outgrows the pool.
class CacheFull : public UserError {
 public:
  explicit CacheFull(const std::string& message) : UserError(message) {}
};

// The cache's storage: the dtype `auto` resolves to, and the page geometry of either layout.
struct LatentCacheShape {
  int64_t slots = 0;        // max_batch_size
  int64_t max_seq_len = 0;  // positions a slot may reach
  int64_t latent_dim = 0;   // C
  int64_t rope_dim = 0;     // dr
  LatentDType dtype = LatentDType::F32;
  bool paged = false;
  int64_t page_size = 0;  // dense: max_seq_len (this rank's rows)
  int64_t pages = 0;      // dense: slots
  // parallel.context_parallel: this rank keeps every context_parallel-th position of a sequence
  // (position t at row t / context_parallel), so max_seq_len and page counts are in its rows.
  int64_t context_parallel = 1;

  // Rows of this rank for a sequence of `positions` positions (the most any rank of the group
  // keeps, so that every rank of it takes the same pages and runs out of them together).
  int64_t rows_for(int64_t positions) const { return (positions + context_parallel - 1) / context_parallel; }
  // Pages that hold `rows` rows.
  int64_t pages_for(int64_t rows) const { return (rows + page_size - 1) / page_size; }
  int64_t pages_per_slot() const { return pages_for(max_seq_len); }
  int64_t page_bytes() const { return page_size * latent_row_bytes(dtype, latent_dim, rope_dim); }
};

// From the model and run.kv_cache; compute_bf16 is what dtype auto follows. context_parallel > 1:
// a rank's share of the cache (run.kv_cache.pages counts a rank's pages).
LatentCacheShape latent_cache_shape(const ModelArgs& model, const KvCacheConfig& config, bool compute_bf16,
                                    int64_t context_parallel = 1);
const char* to_string(LatentDType dtype);

// A uniform schedule of `sequences` sequences of `tokens` positions must fit the pool: a UserError
// naming run.kv_cache.pages (with what it needs) when it cannot, before any step runs.
void check_cache_holds(const LatentCacheShape& shape, int64_t sequences, int64_t tokens);

class LatentCache;
// "[4, 4096, 576] latent (c_n | k_pe), fp32, 37.7 MB" (dense) or "paged: 24 pages of 64 positions,
// fp8 rows, 1.0 MB" for the logs.
std::string describe(const LatentCache& cache);

// Where the rows live: in the cache's own host pool (the CPU layer), or elsewhere (the CUDA layer
// keeps them in device memory and uses this class for the pages and block tables alone).
enum class LatentCachePool { Host, External };

class LatentCache {
 public:
  explicit LatentCache(const LatentCacheShape& shape, LatentCachePool pool = LatentCachePool::Host);

  const LatentCacheShape& shape() const { return shape_; }
  // Positions slot holds (written by steps so far; with context parallelism, of the whole group).
  int64_t held_len(int64_t slot) const { return held_len_[static_cast<size_t>(slot)]; }
  // Makes every sequence of the step able to hold its positions [0, start_pos + new_tokens) (its
  // rows of them): takes pages from the pool as needed, for all of them or, when the pool is short,
  // for none (CacheFull, naming run.kv_cache.pages).
  void reserve(const RaggedStep& step);
  // After the step wrote its positions: each sequence with tokens holds [0, start_pos + new_tokens).
  void hold(const RaggedStep& step);
  // Gives a finished sequence's pages back to the pool (paged; a dense slot keeps its page).
  void release(int64_t slot);

  // One page's rows copied to another: `bytes` from the start of page src to page dst.
  struct PageCopy {
    int32_t src = 0, dst = 0;
    int64_t bytes = 0;
  };
  // Forks a sequence (parallel sampling, or a benchmark filling many sequences with one prompt's
  // rows): to_slot, which must hold nothing, gets pages of its own holding copies of from_slot's
  // rows, and holds the same positions. All pages or none (CacheFull). A host pool is copied here;
  // for an external one the caller copies the returned pages.
  std::vector<PageCopy> fork(int64_t from_slot, int64_t to_slot);

  int64_t pages_free() const { return static_cast<int64_t>(free_pages_.size()); }
  // The pool's bytes (wherever it lives), and the bytes of the pages held now and at most so far.
  int64_t pool_bytes() const { return shape_.pages * shape_.page_bytes(); }
  int64_t bytes_in_use() const { return pages_in_use_ * shape_.page_bytes(); }
  int64_t peak_bytes_in_use() const { return peak_pages_in_use_ * shape_.page_bytes(); }

  // The view a step's kernels read and write: row b of its block table is slots[b]'s pages.
  // `table` holds the rows and must outlive the view. An external pool: view.pool is null, the
  // caller points it (and the block table) at its own copies.
  PagedLatentView view(const std::vector<int64_t>& slots, std::vector<int32_t>& table);

  // Tests: hand out free pages in an order drawn from seed (results must not depend on it).
  void shuffle_free_pages(uint64_t seed);

 private:
  // Pages slot needs for len positions (its rows of them) beyond what it has.
  int64_t pages_needed(int64_t slot, int64_t len) const;

  LatentCacheShape shape_;
  AlignedVector<uint8_t> pool_;
  std::vector<std::vector<int32_t>> slot_pages_;  // per slot, its pages in position order
  std::vector<int64_t> held_len_;
  std::vector<int32_t> free_pages_;  // taken from the back
  int64_t pages_in_use_ = 0;
  int64_t peak_pages_in_use_ = 0;
};

// Throws std::invalid_argument, naming `layer`, when a sequence of the step starts past the
// positions its slot holds (a step may only extend a sequence, or rewrite its last positions).
void check_step_follows_cache(const char* layer, const RaggedStep& step, const LatentCache& cache);

}  // namespace mla
