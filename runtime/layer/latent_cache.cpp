#include "runtime/layer/latent_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>

#include "runtime/base/units.h"

namespace mla {

const char* to_string(LatentDType dtype) {
  switch (dtype) {
    case LatentDType::F32: return "fp32";
    case LatentDType::BF16: return "bf16";
    case LatentDType::FP8: return "fp8";
  }
  return "?";
}

std::string describe(const LatentCache& cache) {
  const LatentCacheShape& shape = cache.shape();
  const std::string bytes = format_bytes(static_cast<double>(cache.pool_bytes()));
  if (!shape.paged) {
    return "[" + std::to_string(shape.slots) + ", " + std::to_string(shape.max_seq_len) + ", " +
           std::to_string(shape.latent_dim + shape.rope_dim) + "] latent (c_n | k_pe), " + to_string(shape.dtype) +
           ", " + bytes;
  }
  return "paged: " + std::to_string(shape.pages) + " pages of " + std::to_string(shape.page_size) + " positions, " +
         to_string(shape.dtype) + " rows, " + bytes;
}

LatentCacheShape latent_cache_shape(const ModelArgs& model, const KvCacheConfig& config, bool compute_bf16,
                                    int64_t context_parallel) {
  LatentCacheShape shape;
  shape.slots = model.max_batch_size;
  shape.context_parallel = context_parallel;
  shape.max_seq_len = shape.rows_for(model.max_seq_len);
  shape.latent_dim = model.kv_lora_rank;
  shape.rope_dim = model.qk_rope_head_dim;
  switch (config.dtype) {
    case KvCacheDType::Auto: shape.dtype = compute_bf16 ? LatentDType::BF16 : LatentDType::F32; break;
    case KvCacheDType::FP32: shape.dtype = LatentDType::F32; break;
    case KvCacheDType::BF16: shape.dtype = LatentDType::BF16; break;
    case KvCacheDType::FP8: shape.dtype = LatentDType::FP8; break;
  }
  shape.paged = config.layout == KvCacheLayout::Paged;
  // A page never holds more rows than a slot can use: under the split that is this rank's share, so
  // a dense cache, one page per slot, shrinks with it as a paged one does.
  shape.page_size = shape.paged ? std::min(config.page_size, shape.max_seq_len) : shape.max_seq_len;
  shape.pages = shape.paged ? (config.pages > 0 ? config.pages : shape.slots * shape.pages_per_slot()) : shape.slots;
  if (shape.pages > std::numeric_limits<int32_t>::max()) {  // block tables hold 32-bit page numbers
    throw UserError("run.kv_cache: " + std::to_string(shape.pages) + " pages are more than a block table can " +
                    "number; give run.kv_cache.pages, or a larger page_size");
  }
  return shape;
}

void check_cache_holds(const LatentCacheShape& shape, int64_t sequences, int64_t tokens) {
  const int64_t needed = sequences * shape.pages_for(shape.rows_for(tokens));
  if (needed <= shape.pages) return;
  throw UserError("run.kv_cache.pages: " + std::to_string(sequences) + " sequences of " + std::to_string(tokens) +
                  " positions need " + std::to_string(needed) + " pages of " + std::to_string(shape.page_size) +
                  ", but the pool has " + std::to_string(shape.pages));
}

LatentCache::LatentCache(const LatentCacheShape& shape, LatentCachePool pool)
    : shape_(shape),
      pool_(pool == LatentCachePool::Host ? static_cast<size_t>(shape.pages * shape.page_bytes()) : 0, 0),
      slot_pages_(static_cast<size_t>(shape.slots)),
      held_len_(static_cast<size_t>(shape.slots), 0) {
  if (!shape_.paged) {
    for (int64_t slot = 0; slot < shape_.slots; ++slot) slot_pages_[slot] = {static_cast<int32_t>(slot)};
    pages_in_use_ = peak_pages_in_use_ = shape_.pages;
    return;
  }
  free_pages_.resize(static_cast<size_t>(shape_.pages));
  // Taken from the back: page 0 first, so an unshuffled pool hands out pages in order.
  for (int64_t i = 0; i < shape_.pages; ++i) free_pages_[i] = static_cast<int32_t>(shape_.pages - 1 - i);
}

int64_t LatentCache::pages_needed(int64_t slot, int64_t len) const {
  return std::max<int64_t>(
      0, shape_.pages_for(shape_.rows_for(len)) - static_cast<int64_t>(slot_pages_[static_cast<size_t>(slot)].size()));
}

void LatentCache::reserve(const RaggedStep& step) {
  int64_t needed = 0;
  for (const SequenceStep& sequence : step.sequences) {
    needed += pages_needed(sequence.slot, sequence.start_pos + sequence.new_tokens);
  }
  if (needed > pages_free()) {
    throw CacheFull("run.kv_cache.pages: the step needs " + std::to_string(needed) + " more page(s) of " +
                    std::to_string(shape_.page_size) + " positions, but " + std::to_string(pages_free()) + " of " +
                    std::to_string(shape_.pages) + " pages are free (" +
                    format_bytes(static_cast<double>(shape_.page_bytes())) + " each)");
  }
  for (const SequenceStep& sequence : step.sequences) {
    std::vector<int32_t>& pages = slot_pages_[static_cast<size_t>(sequence.slot)];
    for (int64_t i = pages_needed(sequence.slot, sequence.start_pos + sequence.new_tokens); i > 0; --i) {
      pages.push_back(free_pages_.back());
      free_pages_.pop_back();
    }
  }
  pages_in_use_ += needed;
  peak_pages_in_use_ = std::max(peak_pages_in_use_, pages_in_use_);
}

void LatentCache::hold(const RaggedStep& step) {
  for (const SequenceStep& sequence : step.sequences) {
    if (sequence.new_tokens > 0)
      held_len_[static_cast<size_t>(sequence.slot)] = sequence.start_pos + sequence.new_tokens;
  }
}

void LatentCache::release(int64_t slot) {
  held_len_[static_cast<size_t>(slot)] = 0;
  if (!shape_.paged) return;
  std::vector<int32_t>& pages = slot_pages_[static_cast<size_t>(slot)];
  // Given back in reverse, so a slot that takes the same number again gets the same pages.
  for (auto page = pages.rbegin(); page != pages.rend(); ++page) free_pages_.push_back(*page);
  pages_in_use_ -= static_cast<int64_t>(pages.size());
  pages.clear();
}

std::vector<LatentCache::PageCopy> LatentCache::fork(int64_t from_slot, int64_t to_slot) {
  if (from_slot < 0 || from_slot >= shape_.slots || to_slot < 0 || to_slot >= shape_.slots || from_slot == to_slot ||
      held_len(to_slot) != 0) {
    throw std::invalid_argument("LatentCache::fork: slot " + std::to_string(to_slot) + " must be another slot than " +
                                std::to_string(from_slot) + ", within the cache's slots, and hold nothing");
  }
  const int64_t len = held_len(from_slot);
  RaggedStep step;
  step.sequences.push_back({to_slot, 0, len});
  reserve(step);
  const int64_t row_bytes = latent_row_bytes(shape_.dtype, shape_.latent_dim, shape_.rope_dim);
  const std::vector<int32_t>& from_pages = slot_pages_[static_cast<size_t>(from_slot)];
  const std::vector<int32_t>& to_pages = slot_pages_[static_cast<size_t>(to_slot)];
  std::vector<PageCopy> copies;
  for (int64_t rows = shape_.rows_for(len), page = 0; rows > 0; rows -= shape_.page_size, ++page) {
    copies.push_back({from_pages[static_cast<size_t>(page)], to_pages[static_cast<size_t>(page)],
                      std::min(rows, shape_.page_size) * row_bytes});
  }
  if (!pool_.empty()) {
    for (const PageCopy& copy : copies) {
      std::memcpy(pool_.data() + copy.dst * shape_.page_bytes(), pool_.data() + copy.src * shape_.page_bytes(),
                  static_cast<size_t>(copy.bytes));
    }
  }
  held_len_[static_cast<size_t>(to_slot)] = len;
  return copies;
}

PagedLatentView LatentCache::view(const std::vector<int64_t>& slots, std::vector<int32_t>& table) {
  const int64_t stride = shape_.pages_per_slot();
  table.assign(slots.size() * static_cast<size_t>(stride), -1);
  for (size_t b = 0; b < slots.size(); ++b) {
    const std::vector<int32_t>& pages = slot_pages_[static_cast<size_t>(slots[b])];
    std::copy(pages.begin(), pages.end(), table.begin() + static_cast<std::ptrdiff_t>(b * stride));
  }
  PagedLatentView view;
  view.pool = pool_.empty() ? nullptr : pool_.data();
  view.dtype = shape_.dtype;
  view.latent_dim = shape_.latent_dim;
  view.rope_dim = shape_.rope_dim;
  view.page_size = shape_.page_size;
  view.block_table = table.data();
  view.block_table_stride = stride;
  return view;
}

void LatentCache::shuffle_free_pages(uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::shuffle(free_pages_.begin(), free_pages_.end(), generator);
}

void check_step_follows_cache(const char* layer, const RaggedStep& step, const LatentCache& cache) {
  for (const SequenceStep& sequence : step.sequences) {
    if (sequence.new_tokens > 0 && sequence.start_pos > cache.held_len(sequence.slot)) {
      throw std::invalid_argument(std::string(layer) + "::forward: start_pos " + std::to_string(sequence.start_pos) +
                                  " of slot " + std::to_string(sequence.slot) + " skips past the " +
                                  std::to_string(cache.held_len(sequence.slot)) + " positions it holds");
    }
  }
}

}  // namespace mla
