// skinny_linear for AVX2 + FMA: compiled with those flags, run only when cpu_isa() reports them.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V broadcast(float value) { return _mm256_set1_ps(value); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce(V v) {
    const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
  }
  // round_bf16_finite of each lane.
  static V round_bf16_finite(V v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), odd);
    return _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static V load_bf16(const uint16_t* p) {
    const __m256i widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(widened, 16));
  }
  // As the AVX-512 version: sign to bit 31, magnitude to bits 20..26.
  static V load_fp8_rebiased(const uint8_t* p) {
    const __m256i widened = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i bits =
        _mm256_and_si256(_mm256_slli_epi32(widened, 20), _mm256_set1_epi32(static_cast<int>(0x87f00000u)));
    return _mm256_castsi256_ps(bits);
  }
};

#include "kernels/cpu/skinny_linear_body.h"

}  // namespace

void skinny_linear_avx2(const SkinnyLinearParams& params) { skinny_dispatch<Avx2>(params); }

}  // namespace mla
