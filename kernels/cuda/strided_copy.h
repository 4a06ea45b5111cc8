// Strided vector copies on the GPU: the twin of kernels/cpu/strided_copy.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/strided_copy.h"

namespace mla {

void strided_copy_cuda(const StridedCopyParams& params, cudaStream_t stream);

}  // namespace mla
