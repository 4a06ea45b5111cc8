#include "runtime/layer/decode_graphs.h"

namespace mla {

int64_t decode_kv_bucket(int64_t kv_len) {
  int64_t power = 16;  // 4 x 16 = 64, the smallest bucket
  while (7 * power < kv_len) power *= 2;
  for (int64_t multiple = 4; multiple < 7; ++multiple) {
    if (multiple * power >= kv_len) return multiple * power;
  }
  return 7 * power;
}

}  // namespace mla
