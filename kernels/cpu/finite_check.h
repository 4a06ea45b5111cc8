// run.check_finite: where a tensor first holds a NaN or an infinity.
#pragma once

#include <cstdint>

namespace mla {

// The index of the first non-finite value of values[0, count), or -1.
int64_t first_non_finite(const float* values, int64_t count);

}  // namespace mla
