// Appends a step's latent rows to the KV cache (docs/design.md: the latent cache c_n | k_pe, kept once
// per rank and shared by every head and both formulations).
#pragma once

#include <cstdint>

namespace mla {

struct KvCacheAppendParams {
  const float* rows = nullptr;  // [batch, seq, row_width]: c_n (C values) then k_pe (dr values)
  int64_t row_stride = 0;
  float* cache = nullptr;  // [max_batch, capacity, row_width]
  int64_t capacity = 0;    // max_seq_len
  int64_t row_width = 0;   // C + dr
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t start_pos = 0;
};

void kv_cache_append(const KvCacheAppendParams& params);

}  // namespace mla
