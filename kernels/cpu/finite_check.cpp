#include "kernels/cpu/finite_check.h"

#include <cmath>

namespace mla {

int64_t first_non_finite(const float* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(values[i])) return i;
  return -1;
}

}  // namespace mla
