#include "kernels/cuda/gemm.h"

#include <limits>
#include <stdexcept>

namespace mla {

void throw_cublas_error(const char* call, const char* file, int line, cublasStatus_t status) {
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cublasGetStatusName(status) + " (" + cublasGetStatusString(status) + ")");
}

CublasContext::CublasContext(cudaStream_t stream) : stream_(stream), workspace_(kWorkspaceBytes) {
  CUBLAS_CHECK(cublasCreate(&handle_));
  try {
    CUBLAS_CHECK(cublasSetStream(handle_, stream_));
    CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
  } catch (...) {
    cublasDestroy(handle_);
    throw;
  }
}

CublasContext::~CublasContext() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

namespace {

int to_cublas_int(int64_t value, const char* what) {
  if (value < 0 || value > std::numeric_limits<int>::max()) {
    throw std::length_error(std::string("gemm_cuda: ") + what + " = " + std::to_string(value) +
                            " does not fit cuBLAS's int");
  }
  return static_cast<int>(value);
}

}  // namespace

void gemm_cuda(CublasContext& context, const GemmCudaParams& p) {
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  const bool bf16 = p.operands == GemmOperands::BF16;
  if (p.c_bf16 != nullptr && (!bf16 || p.beta != 0.0f)) {
    throw std::invalid_argument("gemm_cuda: a bf16 product needs bf16 operands and beta 0");
  }
  void* const c = p.c_bf16 != nullptr ? static_cast<void*>(p.c_bf16) : static_cast<void*>(p.c);
  const cudaDataType_t c_type = p.c_bf16 != nullptr ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t operand_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  // fp32 operands must give fp32 products (docs/design.md's 1e-5): the pedantic compute type keeps
  // cuBLAS off TF32 and other reduced-precision shortcuts, unless they hold bf16 numbers, which
  // TF32 represents exactly; bf16 operands use the tensor cores.
  const cublasComputeType_t compute = bf16            ? CUBLAS_COMPUTE_32F
                                      : p.bf16_values ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                      : CUBLAS_COMPUTE_32F_PEDANTIC;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the operands swap places
  // and each keeps its own transpose flag.
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      context.handle(), p.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, p.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      to_cublas_int(p.n, "n"), to_cublas_int(p.m, "m"), to_cublas_int(p.k, "k"), &p.alpha, p.b, operand_type,
      to_cublas_int(p.ldb, "ldb"), p.stride_b, p.a, operand_type, to_cublas_int(p.lda, "lda"), p.stride_a, &p.beta, c,
      c_type, to_cublas_int(p.ldc, "ldc"), p.stride_c, to_cublas_int(p.batch, "batch"), compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace mla
