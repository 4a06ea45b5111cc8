#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/kv_cache_append.h"

namespace mla {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) kv_cache_append_kernel(KvCacheAppendParams p) {
  const int64_t count = p.batch * p.seq * p.row_width;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < count;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = index % p.row_width;
    const int64_t token = index / p.row_width;
    const int64_t b = token / p.seq;
    const int64_t s = token % p.seq;
    p.cache[(b * p.capacity + p.start_pos + s) * p.row_width + col] = p.rows[token * p.row_stride + col];
  }
}

}  // namespace

void kv_cache_append_cuda(const KvCacheAppendParams& params, cudaStream_t stream) {
  if (params.start_pos < 0 || params.start_pos + params.seq > params.capacity) {
    throw std::out_of_range("kv_cache_append: positions past the cache capacity");
  }
  const int64_t count = params.batch * params.seq * params.row_width;
  if (count == 0) return;
  kv_cache_append_kernel<<<cuda_detail::grid_for(count, kThreads), kThreads, 0, stream>>>(params);
  CUDA_CHECK_LAUNCH("kv_cache_append_kernel");
}

}  // namespace mla
