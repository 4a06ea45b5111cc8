// skinny_linear for AVX-512 (F, BW, VL, DQ): compiled with those flags, run only when cpu_isa()
// reports them.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/skinny_linear_isa.h"

namespace mla {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V broadcast(float value) { return _mm512_set1_ps(value); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce(V v) { return _mm512_reduce_add_ps(v); }
  // round_bf16_finite of each lane.
  static V round_bf16_finite(V v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
    return _mm512_castsi512_ps(_mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static V load_bf16(const uint16_t* p) {
    const __m512i widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
  }
  // Sign-extended code shifted left by 20: the sign lands in bit 31 and the 7 magnitude bits in
  // 20..26; the mask clears the sign extension's copies in 27..30.
  static V load_fp8_rebiased(const uint8_t* p) {
    const __m512i widened = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512i bits =
        _mm512_and_si512(_mm512_slli_epi32(widened, 20), _mm512_set1_epi32(static_cast<int>(0x87f00000u)));
    return _mm512_castsi512_ps(bits);
  }
};

#include "kernels/cpu/skinny_linear_body.h"

}  // namespace

void skinny_linear_avx512(const SkinnyLinearParams& params) { skinny_dispatch<Avx512>(params); }

}  // namespace mla
