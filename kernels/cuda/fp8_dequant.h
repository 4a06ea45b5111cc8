// fp8 e4m3 weights times their 128x128 block scales, on the GPU: the twin of
// kernels/cpu/fp8 (same parameters, device pointers).
//
// Why not an fp8 GEMM: CUDA 13's cuBLASLt does run block-scaled fp8 matmuls on Hopper
// (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F for the weight, VEC128_32F for the activation,
// added in cuBLAS 12.9), but it needs the activations quantized to fp8 in 1x128 blocks too. That
// is a different computation from docs/design.md's (and from DeepSeek's bf16 path), where the weight is
// dequantized and the activations stay bf16; the runtime keeps docs/design.md's arithmetic and
// dequantizes once, at load.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cpu/fp8.h"

namespace mla {

void fp8_dequant_blocks_cuda(const Fp8DequantParams& params, cudaStream_t stream);

}  // namespace mla
