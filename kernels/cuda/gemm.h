// GEMMs through cuBLAS: the twin of kernels/cpu/gemm. Row-major like the CPU side, a batch of
// matrices at fixed strides (per-head GEMMs in one call), operands fp32 or bf16, the product
// accumulated in fp32 and returned in fp32 (or rounded to bf16).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cublas_v2.h>
#include <string>

#include "kernels/cuda/device_buffer.h"

namespace mla {

[[noreturn]] void throw_cublas_error(const char* call, const char* file, int line, cublasStatus_t status);

}  // namespace mla

#define CUBLAS_CHECK(call)                                                      \
  do {                                                                          \
    const cublasStatus_t mla_cublas_status_ = (call);                           \
    if (mla_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                          \
      ::mla::throw_cublas_error(#call, __FILE__, __LINE__, mla_cublas_status_); \
    }                                                                           \
  } while (0)

namespace mla {

// One cuBLAS handle bound to the layer's stream, with a workspace of our own so that its bytes
// are counted in the layer's memory report.
class CublasContext {
 public:
  static constexpr int64_t kWorkspaceBytes = int64_t{32} << 20;  // cuBLAS's advice for Hopper

  explicit CublasContext(cudaStream_t stream);
  ~CublasContext();
  CublasContext(const CublasContext&) = delete;
  CublasContext& operator=(const CublasContext&) = delete;

  cublasHandle_t handle() const { return handle_; }
  cudaStream_t stream() const { return stream_; }
  int64_t workspace_bytes() const { return static_cast<int64_t>(workspace_.bytes()); }

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer<unsigned char> workspace_;
};

enum class GemmOperands { F32, BF16 };

// For each i < batch: c_i[m, n] = alpha * op(a_i) op(b_i) + beta * c_i, row-major, with
// x_i = x + i * stride_x. A stride of 0 reuses one matrix (the latent cache, shared by heads).
struct GemmCudaParams {
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const void* a = nullptr;
  int64_t lda = 0;
  int64_t stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  int64_t stride_b = 0;
  float beta = 0.0f;
  float* c = nullptr;
  // bf16 operands only: the product rounded to bf16 (to nearest even, as round_rows) and written
  // here instead of c; beta must be 0. Half the bytes of c, and no rounding pass afterwards.
  uint16_t* c_bf16 = nullptr;
  int64_t ldc = 0;
  int64_t stride_c = 0;
  int64_t batch = 1;
  GemmOperands operands = GemmOperands::F32;  // a and b; fp32 operands go through TF32 only as below
  // fp32 operands that hold bf16 numbers (bf16 mode's scores, probabilities, keys and values):
  // TF32 keeps 10 fraction bits, bf16 numbers have 7, so the tensor cores' TF32 products are
  // exact on them and accumulate in fp32, like a bf16 GEMM, without a bf16 copy of either operand.
  bool bf16_values = false;
};

void gemm_cuda(CublasContext& context, const GemmCudaParams& params);

}  // namespace mla
