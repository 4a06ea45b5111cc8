// Appends a step's latent rows to the device KV cache: the twin of kernels/cpu/kv_cache_append.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/kv_cache_append.h"

namespace mla {

void kv_cache_append_cuda(const KvCacheAppendParams& params, cudaStream_t stream);

}  // namespace mla
