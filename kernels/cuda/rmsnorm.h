// RMSNorm on the GPU: the twin of kernels/cpu/rmsnorm (same parameters, device pointers).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/rmsnorm.h"

namespace mla {

void rmsnorm_cuda(const RmsNormParams& params, cudaStream_t stream);

}  // namespace mla
