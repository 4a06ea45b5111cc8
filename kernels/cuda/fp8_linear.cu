#include <cuda_fp8.h>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fp8_linear.h"
#include "kernels/cuda/mma_ops.cuh"

namespace mla {

namespace {

using cuda_detail::commit_copies;
using cuda_detail::copy_16_async;
using cuda_detail::mma_bf16_16x8x16;
using cuda_detail::wait_copies;

// A block computes 16 outputs (two 8-output tiles of the tensor cores) for every row of the step;
// its four warps take turns over the inputs, 64 at a time, and add their sums at the end in a
// fixed order (the result does not depend on timing). Many blocks of few outputs keep every SM
// streaming codes even for the narrow projections (wkv_a: 36 blocks of 4 warps).
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTilesN = 2;
constexpr int kChunk = 64;                    // inputs per warp per step: four k16 operand steps
constexpr int kStepInputs = kWarps * kChunk;  // inputs per block step, staged together
// bf16 per staged row: the 8 extra put the rows' operand reads in different banks.
constexpr int kXStride = kStepInputs + 8;

// Two codes (the low byte first) times the block's scale, each rounded to bf16, as the tensor
// cores' bf16 pair (the first in the low half). Every e4m3 value is exact in fp16, so the
// conversion through half is exact; the product rounds as fp8_dequant_blocks' does.
__device__ __forceinline__ uint32_t dequantize_pair(uint32_t two_codes, float scale) {
  const __half2_raw halves = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_codes), __NV_E4M3);
  const float2 values = __half22float2(__half2(halves));
  return cuda_detail::pack_bf16_pair(__fmul_rn(values.x, scale), __fmul_rn(values.y, scale));
}

// kMTiles 16-row tiles of the step's rows (1: up to 16 rows, 2: up to 32).
template <int kMTiles>
__global__ void __launch_bounds__(kThreads) fp8_linear_kernel(Fp8LinearCudaParams p) {
  constexpr int kRows = kMTiles * 16;
  __shared__ __align__(16) __nv_bfloat16 x_stage[2][kRows][kXStride];
  __shared__ float partial[kWarps - 1][kMTiles][kTilesN][4][32];

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int group = lane / 4;  // the fragments' row (a, c) or output (b) within a tile
  const int pair = lane % 4;   // and the pair of inputs (a, b) or outputs (c)
  const int64_t first_tile = static_cast<int64_t>(blockIdx.x) * kTilesN;
  const int64_t chunks = p.in_features / kChunk;
  const int64_t steps = (chunks + kWarps - 1) / kWarps;

  // Inputs [step * kStepInputs, + kStepInputs) of every row into x_stage[buffer].
  const auto stage = [&](int64_t step, int buffer) {
    constexpr int kPiecesPerRow = kStepInputs / 8;  // 16 bytes each
    for (int piece = static_cast<int>(threadIdx.x); piece < kRows * kPiecesPerRow; piece += kThreads) {
      const int row = piece / kPiecesPerRow;
      const int col = (piece % kPiecesPerRow) * 8;
      const int64_t input = step * kStepInputs + col;
      const bool valid = row < p.rows && input < p.in_features;
      copy_16_async(&x_stage[buffer][row][col], valid ? p.x + row * p.in_features + input : p.x, valid);
    }
    commit_copies();
  };
  // The lane's 16 codes of each of the block's tiles for one chunk of 64 inputs (zeros past the end).
  const auto load_codes = [&](int64_t chunk, uint4(&codes)[kTilesN]) {
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) {
      codes[nt] = chunk < chunks ? __ldg(reinterpret_cast<const uint4*>(
                                       p.packed_codes + (((first_tile + nt) * chunks + chunk) * 32 + lane) * 16))
                                 : make_uint4(0, 0, 0, 0);
    }
  };

  float sums[kMTiles][kTilesN][4] = {};
  uint4 codes[kTilesN];
  uint4 next_codes[kTilesN];
  stage(0, 0);
  load_codes(warp, next_codes);
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = static_cast<int>(step & 1);
    if (step + 1 < steps) {
      stage(step + 1, buffer ^ 1);  // read two steps ago: the barrier at the end of the last step passed
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    const int64_t chunk = step * kWarps + warp;
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) codes[nt] = next_codes[nt];
    load_codes(chunk + kWarps, next_codes);  // in flight while this chunk is multiplied
    if (chunk < chunks) {
      float scale[kTilesN];
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt) {
        const int64_t block_row = (first_tile + nt) * 8 / 128;  // a tile's 8 outputs share one block row
        scale[nt] = __ldg(p.block_scales + block_row * p.scale_cols + chunk * kChunk / 128);
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const int col = warp * kChunk + kk * 16 + 2 * pair;
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          const __nv_bfloat16* top = &x_stage[buffer][mt * 16 + group][col];
          const __nv_bfloat16* bottom = &x_stage[buffer][mt * 16 + group + 8][col];
          a[mt][0] = *reinterpret_cast<const uint32_t*>(top);
          a[mt][1] = *reinterpret_cast<const uint32_t*>(bottom);
          a[mt][2] = *reinterpret_cast<const uint32_t*>(top + 8);
          a[mt][3] = *reinterpret_cast<const uint32_t*>(bottom + 8);
        }
#pragma unroll
        for (int nt = 0; nt < kTilesN; ++nt) {
          // Bytes 4 kk .. 4 kk + 3 of the lane's 16: inputs 2t, 2t+1 (b0), then 2t+8, 2t+9 (b1).
          const uint4& lane_codes = codes[nt];
          const uint32_t word = kk == 0 ? lane_codes.x : kk == 1 ? lane_codes.y : kk == 2 ? lane_codes.z : lane_codes.w;
          const uint32_t b0 = dequantize_pair(word & 0xffffu, scale[nt]);
          const uint32_t b1 = dequantize_pair(word >> 16, scale[nt]);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) mma_bf16_16x8x16(sums[mt][nt], a[mt], b0, b1);
        }
      }
    }
    __syncthreads();
  }

  // Warps 1.. hand their sums to warp 0, which adds them in warp order and writes the outputs.
  if (warp > 0) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[warp - 1][mt][nt][i][lane] = sums[mt][nt][i];
      }
    }
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kTilesN; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = sums[mt][nt][i];
        for (int w = 0; w < kWarps - 1; ++w) sum += partial[w][mt][nt][i][lane];
        // The accumulator's layout: c0, c1 in row `group`, c2, c3 eight rows below; outputs 2t, 2t+1.
        const int row = mt * 16 + group + (i >= 2 ? 8 : 0);
        const int64_t output = (first_tile + nt) * 8 + 2 * pair + (i & 1);
        if (row < p.rows) p.y[row * p.y_stride + output] = sum;
      }
    }
  }
}

}  // namespace

bool fp8_linear_fits(int64_t out_features, int64_t in_features) {
  return out_features > 0 && in_features > 0 && out_features % (kTilesN * 8) == 0 && in_features % kChunk == 0;
}

std::vector<uint8_t> fp8_linear_pack(const uint8_t* codes, int64_t out_features, int64_t in_features) {
  if (!fp8_linear_fits(out_features, in_features)) {
    throw std::invalid_argument("fp8_linear_pack: a weight of " + std::to_string(out_features) + " x " +
                                std::to_string(in_features) +
                                " (the kernel takes outputs in multiples of 16, inputs in multiples of 64)");
  }
  constexpr int kInputOffsets[4] = {0, 1, 8, 9};  // of the pair 2t within each 16 inputs
  const int64_t chunks = in_features / kChunk;
  std::vector<uint8_t> packed(static_cast<size_t>(out_features * in_features));
  for (int64_t tile = 0; tile < out_features / 8; ++tile) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int lane = 0; lane < 32; ++lane) {
        const int64_t row = tile * 8 + lane / 4;
        for (int kk = 0; kk < 4; ++kk) {
          for (int j = 0; j < 4; ++j) {
            const int64_t col = chunk * kChunk + kk * 16 + 2 * (lane % 4) + kInputOffsets[j];
            packed[static_cast<size_t>(((tile * chunks + chunk) * 32 + lane) * 16 + kk * 4 + j)] =
                codes[row * in_features + col];
          }
        }
      }
    }
  }
  return packed;
}

void fp8_linear_cuda(const Fp8LinearCudaParams& p, cudaStream_t stream) {
  if (p.rows < 1 || p.rows > kFp8LinearMaxRows || !fp8_linear_fits(p.out_features, p.in_features)) {
    throw std::invalid_argument("fp8_linear_cuda: " + std::to_string(p.rows) + " rows of a " +
                                std::to_string(p.out_features) + " x " + std::to_string(p.in_features) +
                                " weight (it takes 1 to " + std::to_string(kFp8LinearMaxRows) +
                                " rows, outputs in multiples of 16, inputs in multiples of 64)");
  }
  const dim3 grid(static_cast<unsigned>(p.out_features / (kTilesN * 8)));
  if (p.rows <= 16) {
    fp8_linear_kernel<1><<<grid, kThreads, 0, stream>>>(p);
  } else {
    fp8_linear_kernel<2><<<grid, kThreads, 0, stream>>>(p);
  }
  CUDA_CHECK_LAUNCH("fp8_linear_kernel");
}

}  // namespace mla
