// y = x W^T for the few rows of a decode step with W streamed as its fp8 e4m3 codes and 128x128
// block scales, dequantized in registers as docs/design.md's Weights section says (code * scale,
// rounded to bf16): the bf16 layer's projections then read 1 byte per weight at decode instead of
// the 2 of the bf16 copy that cuBLAS reads, and decode is bound by those bytes.
//
// x is bf16 numbers (bf16 compute stages its activations so); the products run on the tensor
// cores (mma.sync m16n8k16, bf16 operands, fp32 accumulation), so y is the bf16 GEMM of x and the
// dequantized weight up to summation order. The twin: kernels/cpu/skinny_linear with fp8 codes,
// round_fp8_to_bf16 and an x that holds bf16 values.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cuda_bf16.h>
#include <vector>

namespace mla {

// A step's rows go through the tensor cores as one or two 16-row tiles.
inline constexpr int64_t kFp8LinearMaxRows = 32;

struct Fp8LinearCudaParams {
  const __nv_bfloat16* x = nullptr;       // [rows, in_features], dense
  int64_t rows = 0;                       // 1 .. kFp8LinearMaxRows
  const uint8_t* packed_codes = nullptr;  // the weight's codes in fp8_linear_pack's order
  const float* block_scales = nullptr;    // [ceil(out_features / 128), scale_cols]
  int64_t scale_cols = 0;
  float* y = nullptr;  // [rows, out_features], row stride y_stride
  int64_t y_stride = 0;
  int64_t out_features = 0;
  int64_t in_features = 0;
};

// Whether the kernel takes a weight of this shape: out_features a multiple of 16 and in_features
// of 64 (every DeepSeek-V3 projection is; others stay with cuBLAS on the bf16 copy).
bool fp8_linear_fits(int64_t out_features, int64_t in_features);

// The codes of a weight [out_features, in_features] (row-major) in the order the kernel streams
// them: for each 8 outputs and 64 inputs, 512 bytes in which lane l of a warp finds, as one
// 16-byte load, the codes of its tensor-core operands: output row l / 4 and, in each 16 inputs,
// the inputs 2t, 2t+1, 2t+8 and 2t+9 (t = l % 4). Throws std::invalid_argument where the shape
// does not fit.
std::vector<uint8_t> fp8_linear_pack(const uint8_t* codes, int64_t out_features, int64_t in_features);

void fp8_linear_cuda(const Fp8LinearCudaParams& params, cudaStream_t stream);

}  // namespace mla
