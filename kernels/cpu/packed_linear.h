// A linear layer's weight prepared once for the CPU's fastest GEMM, and y = x W^T with it
// (docs/design.md, Weights). With oneDNN (Debian's libdnnl) the weight is reordered at construction into
// the blocked layout oneDNN's brgemm kernels read, so no step repacks it (a BLAS call packs its B
// operand again on every call, a full pass over the weight); in bf16 the weight is stored as bf16
// and the GEMM runs on AMX tiles or AVX512_BF16 dot products, whichever oneDNN finds. Without
// oneDNN, or with MLA_CPU_ISA=portable, it is an fp32 copy and OpenBLAS's sgemm.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mla {

enum class LinearPrecision {
  FP32,  // fp32 operands, fp32 accumulation
  BF16,  // bf16 operands (x and W hold bf16 values), fp32 accumulation, as DeepSeek's bf16 F.linear
};

struct PackedLinearCall {
  const float* x = nullptr;  // [rows, in_features], row stride x_stride (bf16 values in BF16)
  int64_t x_stride = 0;
  // BF16 only, instead of x: the input as bf16 numbers, dense [rows, in_features]. A layer whose
  // input feeds several linear layers converts it once.
  const uint16_t* x_bf16 = nullptr;
  float* y = nullptr;  // [rows, out_features], row stride y_stride
  int64_t y_stride = 0;
  // BF16 with round_to_bf16 only, instead of y: y as bf16 numbers, dense [rows, out_features], for
  // a layer that reads them as bf16 next (no widening pass, half the bytes written).
  uint16_t* y_bf16 = nullptr;
  int64_t rows = 0;
  bool round_to_bf16 = false;  // y rounded to bf16, as DeepSeek's bf16 F.linear returns it
};

// An fp8 weight's codes and block scales (docs/design.md, Weights): codes [out, in] row-major, scales
// [ceil(out/128), scale_cols].
struct Fp8Blocks {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  int64_t scale_cols = 0;
  bool round_to_bf16 = false;  // each code * scale rounded to bf16 (weights.fp8_dequant: bf16)
};

class PackedLinear {
 public:
  PackedLinear();
  // weight: [out_features, in_features] row-major; in BF16 its values must be bf16 values (the
  // loader rounds them). In FP32, a weight stored in fewer bits keeps them for steps of up to
  // kSkinnyMaxRows rows (decode), streamed by skinny_linear: fp8 when `fp8` gives its codes and
  // scales (weight then holds code * scale, rounded to bf16 when fp8->round_to_bf16, as the
  // streamed kernel rounds it too), bf16 when every value is a bf16 value; the GEMM
  // operand for longer steps is built from those bits on the first such step. Throws
  // std::runtime_error naming the library call that failed.
  PackedLinear(const float* weight, int64_t out_features, int64_t in_features, LinearPrecision precision,
               const Fp8Blocks* fp8 = nullptr);
  PackedLinear(PackedLinear&&) noexcept;
  PackedLinear& operator=(PackedLinear&&) noexcept;
  ~PackedLinear();

  void forward(const PackedLinearCall& call) const;

  int64_t out_features() const { return out_features_; }
  int64_t in_features() const { return in_features_; }
  bool empty() const { return impl_ == nullptr; }
  // Bytes held: the streamed bits and the GEMM operand, whichever exist.
  int64_t bytes() const;
  // Bytes a step of up to kSkinnyMaxRows rows reads when the weight is streamed (0 when it is not).
  int64_t streamed_bytes() const;
  // Weight bytes a step of `rows` rows reads from memory: the streamed bits or the GEMM operand.
  int64_t bytes_read(int64_t rows) const;
  // "oneDNN brg:avx512_core_amx_bf16, bf16" or "OpenBLAS sgemm, fp32": for run summaries and benchmarks.
  std::string implementation() const;

 private:
  struct Impl;
  void prepare_gemm(const float* weight) const;
  void forward_streamed(const PackedLinearCall& call) const;
  void forward_onednn(const PackedLinearCall& call) const;
  std::vector<float> streamed_values() const;

  int64_t out_features_ = 0;
  int64_t in_features_ = 0;
  std::unique_ptr<Impl> impl_;
};

// Whether this build links oneDNN.
bool have_onednn();

}  // namespace mla
