#include "kernels/cpu/kv_cache_append.h"

#include <cstring>
#include <stdexcept>

namespace mla {

void kv_cache_append(const KvCacheAppendParams& p) {
  if (p.start_pos < 0 || p.start_pos + p.seq > p.capacity) {
    throw std::out_of_range("kv_cache_append: positions past the cache capacity");
  }
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t s = 0; s < p.seq; ++s) {
      std::memcpy(p.cache + (b * p.capacity + p.start_pos + s) * p.row_width, p.rows + (b * p.seq + s) * p.row_stride,
                  static_cast<size_t>(p.row_width) * sizeof(float));
    }
  }
}

}  // namespace mla
