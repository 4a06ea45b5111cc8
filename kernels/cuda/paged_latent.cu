#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/latent_rows.cuh"
#include "kernels/cuda/paged_latent.h"

namespace mla {

namespace {

// One block per token; a warp per block of 128 latent values (4 values a lane).
constexpr int kThreads = 128;

using cuda_detail::latent_row_address;
using cuda_detail::latent_row_geometry;
using cuda_detail::LatentRowGeometry;

__device__ void store_bf16(uint8_t* out, int64_t index, float value) {
  const __nv_bfloat16 rounded = __float2bfloat16_rn(value);  // nearest even, as f32_to_bf16_bits
  memcpy(out + index * 2, &rounded, sizeof(rounded));
}

// docs/design.md, The latent cache: per block of 128 values scale = max|block| / 448 (1 for an
// all-zero block), code = e4m3(value / scale) rounded to nearest even and saturated; k_pe bf16.
__device__ void store_fp8_row(const float* row, int64_t latent_dim, int64_t rope_dim, int64_t blocks, uint8_t* out) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  uint8_t* scales = out + latent_dim;
  for (int64_t block = warp; block < blocks; block += kThreads / 32) {
    const int64_t begin = block * kLatentFp8Block;
    const int64_t end = min(latent_dim, begin + kLatentFp8Block);
    float max_abs = 0.0f;
    for (int64_t i = begin + lane; i < end; i += 32) max_abs = fmaxf(max_abs, fabsf(row[i]));
    max_abs = cuda_detail::warp_max(max_abs);
    const float scale = max_abs > 0.0f ? max_abs / 448.0f : 1.0f;
    for (int64_t i = begin + lane; i < end; i += 32) {
      out[i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(row[i] / scale, __NV_SATFINITE, __NV_E4M3));
    }
    if (lane == 0) memcpy(scales + block * 4, &scale, sizeof(scale));
  }
  uint8_t* rope = scales + blocks * 4;
  for (int64_t i = threadIdx.x; i < rope_dim; i += blockDim.x) store_bf16(rope, i, row[latent_dim + i]);
}

__global__ void __launch_bounds__(kThreads)
    paged_latent_append_kernel(PagedLatentAppendParams p, LatentRowGeometry shape) {
  const int64_t token = blockIdx.x;
  const PagedLatentView& cache = p.cache;
  const float* row = p.rows + (p.row_index != nullptr ? p.row_index[token] : token) * p.row_stride;
  uint8_t* out = latent_row_address(cache, shape, p.sequence[token], p.position[token]);
  const int64_t width = cache.latent_dim + cache.rope_dim;
  if (cache.dtype == LatentDType::F32) {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) memcpy(out + i * 4, row + i, sizeof(float));
  } else if (cache.dtype == LatentDType::BF16) {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) store_bf16(out, i, row[i]);
  } else {
    store_fp8_row(row, cache.latent_dim, cache.rope_dim, shape.fp8_blocks, out);
  }
}

__global__ void __launch_bounds__(kThreads)
    paged_latent_gather_kernel(PagedLatentGatherParams p, LatentRowGeometry shape) {
  const int64_t index = blockIdx.x;
  const PagedLatentView& cache = p.cache;
  const int64_t sequence = p.sequence != nullptr ? p.sequence[index] : p.only_sequence + blockIdx.y;
  const uint8_t* row = latent_row_address(cache, shape, sequence, p.position != nullptr ? p.position[index] : index);
  const int64_t width = cache.latent_dim + cache.rope_dim;
  float* out = p.out + (blockIdx.y * p.count + index) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
    out[i] = cuda_detail::load_latent_value(cache, shape, row, i);
}

}  // namespace

void paged_latent_append_cuda(const PagedLatentAppendParams& params, cudaStream_t stream) {
  if (params.tokens == 0) return;
  paged_latent_append_kernel<<<static_cast<unsigned>(params.tokens), kThreads, 0, stream>>>(
      params, latent_row_geometry(params.cache));
  CUDA_CHECK_LAUNCH("paged_latent_append_kernel");
}

void paged_latent_gather_cuda(const PagedLatentGatherParams& params, cudaStream_t stream) {
  if (params.count == 0 || params.sequences == 0) return;
  if (params.sequences < 0 || params.sequences > 65535 || (params.sequence != nullptr && params.sequences != 1)) {
    throw std::invalid_argument("paged_latent_gather_cuda: " + std::to_string(params.sequences) +
                                " sequences (1 to 65535, and 1 with the lists)");
  }
  const dim3 grid(static_cast<unsigned>(params.count), static_cast<unsigned>(params.sequences));
  paged_latent_gather_kernel<<<grid, kThreads, 0, stream>>>(params, latent_row_geometry(params.cache));
  CUDA_CHECK_LAUNCH("paged_latent_gather_kernel");
}

}  // namespace mla
