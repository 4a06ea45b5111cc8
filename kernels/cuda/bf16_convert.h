// fp32 <-> bf16 on the GPU, the twins of kernels/cpu/bf16.h: activations are kept as fp32 values
// that bf16 represents exactly (as on the CPU), and converted to bf16 storage right before a
// tensor-core GEMM reads them.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cuda_bf16.h>

namespace mla {

// dst[r * cols + c] = bf16(src[r * src_stride + c]) (round to nearest even): a dense copy.
// With rows_per_batch > 0 the source rows come in batches at their own stride: row r is row
// r % rows_per_batch of batch r / rows_per_batch, at src + batch * src_batch_stride (the first
// kv_len rows of every sequence's cache, gathered into one operand).
struct Bf16ConvertParams {
  const float* src = nullptr;
  int64_t src_stride = 0;
  __nv_bfloat16* dst = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t rows_per_batch = 0;
  int64_t src_batch_stride = 0;
};

void f32_to_bf16_cuda(const Bf16ConvertParams& params, cudaStream_t stream);

}  // namespace mla
