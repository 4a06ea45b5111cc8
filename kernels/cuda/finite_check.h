// run.check_finite on device memory: the twin of kernels/cpu/finite_check.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mla {

// The index of the first non-finite value of values[0, count), or -1. `scratch` is one device
// word; waits for the stream.
int64_t first_non_finite_cuda(const float* values, int64_t count, unsigned long long* scratch, cudaStream_t stream);

}  // namespace mla
