// The inner loops of the fused attention (a dot product and y += a * x over fp32 vectors) and
// of the bf16 activations' conversions. Compiled for AVX-512, AVX2 and baseline x86-64; the
// loader picks the best the CPU reports.
#pragma once

#include <cstdint>

// target_clones builds one body per instruction set and dispatches through an ifunc resolver
// that reads the CPU's flags once, so one binary runs on Zen 4, Xeon and older machines alike.
// Baseline x86-64 alone is SSE2: 4 lanes, and no instruction that narrows 32-bit lanes to 16.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define MLA_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MLA_VECTOR_CLONES
#endif

namespace mla {

float dot_f32(const float* x, const float* y, int64_t n);
void axpy_f32(float a, const float* x, float* y, int64_t n);
// Four at once, so that the shared operand is loaded once for four keys: out[j] = dot(x, y[j]);
// and y += sum_j a[j] x[j], which reads and writes y once instead of four times.
void dot4_f32(const float* x, const float* const y[4], int64_t n, float out[4]);
void axpy4_f32(const float a[4], const float* const x[4], float* y, int64_t n);
// Four rows against four vectors, each operand loaded once for sixteen products (the attention's
// row blocks): out[4 * i + j] = dot(x[i], y[j]); and y[i] += sum_j a[4 * i + j] x[j].
void dot_4x4_f32(const float* const x[4], const float* const y[4], int64_t n, float out[16]);
void axpy_4x4_f32(const float a[16], const float* const x[4], float* const y[4], int64_t n);

// dst[i] = round_to_bf16(src[i]); dst may be src.
void round_to_bf16_copy(const float* src, float* dst, int64_t n);
// The bf16 numbers that fp32 values holding bf16 values stand for: their upper halves, exactly.
void bf16_values_to_bits(const float* src, uint16_t* dst, int64_t n);
// dst[i] = f32_to_bf16_bits(src[i]): fp32 values rounded to bf16 numbers in one pass.
void f32_to_bf16_bits_rne(const float* src, uint16_t* dst, int64_t n);
// dst[i] = bf16_bits_to_f32(src[i]): bf16 numbers widened to fp32, exactly.
void bf16_bits_to_f32_copy(const uint16_t* src, float* dst, int64_t n);

}  // namespace mla
