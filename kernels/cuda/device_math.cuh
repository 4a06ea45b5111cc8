// Small device helpers shared by the kernels: bf16 rounding exactly as the CPU twin does it
// (round to nearest even), and warp/block reductions.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>

namespace mla::cuda_detail {

__device__ __forceinline__ float round_bf16(float value) { return __bfloat162float(__float2bfloat16_rn(value)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values of T in shared memory.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = lane < warps ? scratch[lane] : T(0);
  return warp_sum(total);
}

__device__ inline float block_max(float value, float* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  value = warp_max(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  float result = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(result);
}

// Element-wise work over `vectors` vectors of `width` elements: a warp takes a piece of at most
// kPieceWidth elements of one vector, each lane kPieceWidth / 32 of them, all loaded before any is
// stored so that the loads are in flight together. index_of(vector) turns the vector's index into
// its offsets once per piece, so no 64-bit division is paid per element (it was the cost of the
// strided copies: 1.9 ms per bf16 prefill step at DeepSeek-V3 sizes). load(offsets, k) reads
// element k of a vector, store(offsets, k, value) writes it; a store may overwrite its own
// vector's source (in-place rounding).
constexpr int kPieceLoads = 8;
constexpr int64_t kPieceWidth = 32 * kPieceLoads;

template <typename IndexOf, typename Load, typename Store>
__device__ void for_each_vector_piece(int64_t vectors, int64_t width, IndexOf index_of, Load load, Store store) {
  const int64_t pieces_per_vector = (width + kPieceWidth - 1) / kPieceWidth;
  const int64_t pieces = vectors * pieces_per_vector;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t piece = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; piece < pieces;
       piece += warps) {
    const int64_t vector = piece / pieces_per_vector;
    const int64_t begin = (piece % pieces_per_vector) * kPieceWidth + lane;
    const auto offsets = index_of(vector);
    float values[kPieceLoads];
#pragma unroll
    for (int u = 0; u < kPieceLoads; ++u) {
      const int64_t k = begin + 32 * u;
      values[u] = k < width ? load(offsets, k) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kPieceLoads; ++u) {
      const int64_t k = begin + 32 * u;
      if (k < width) store(offsets, k, values[u]);
    }
  }
}

// Blocks for `count` elements at `threads` per block, for grid-stride loops.
inline unsigned grid_for(int64_t count, int threads) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

}  // namespace mla::cuda_detail
