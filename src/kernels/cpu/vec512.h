// 16-lane AVX-512 forms of common.h's helpers, for the kernels' AVX-512 copies (attention_blocked.cpp) and their
// tests. Every function carries the AVX-512 target itself, so it inlines into code compiled for that target
// (#pragma GCC target or the same attribute) and nowhere else; call it only where the CPU has AVX-512 (F, BW, VL,
// DQ). Internal to kernels/cpu, as common.h.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/common.h"

// GCC 12 reports the _mm512_undefined_* inside its own intrinsics as uninitialised wherever they are inlined (a false
// positive, GCC bug 105593): off for the rest of a file that includes this header.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define ZL_VEC512 1
// A function compiled for AVX-512 (callable from anywhere, where the CPU has it), and the helpers' form of it: always
// inlined, into callers compiled for the same target.
#define ZL_AVX512_FN __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq")))
#define ZL_AVX512_INLINE __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"), always_inline))
// The same with AVX512-BF16's conversions (vcvtneps2bf16).
#define ZL_AVX512BF16_FN __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")))
#define ZL_AVX512BF16_INLINE __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16"), always_inline))

namespace zerolora::kernels::cpu {

// Whether the kernels' AVX-512 copies may run: the CPU has AVX-512 F, BW, VL and DQ, and oneDNN's effective ISA
// (ONEDNN_MAX_CPU_ISA caps it, kernels/cpu_info.h) includes avx512_core. Read once (kernels/cpu/cpu_info.cpp).
bool avx512_enabled();

// cpu::exp_fast on 16 lanes: the same operations in the same order, so the same bits (tests compare them over
// every float of the range that matters and the special values).
ZL_AVX512_INLINE inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(kExpLo), hi = _mm512_set1_ps(kExpHi), magic = _mm512_set1_ps(kExpMagic);
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);  // NaN lanes are replaced at the end
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kExpLog2e), magic), magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kExpLn2Hi), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(kExpLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP[i]));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// 16 floats -> the 16 bf16 of cpu::round_bf16 (nearest even, NaN kept quiet), as bits.
ZL_AVX512_INLINE inline __m256i to_bf16_16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

// The same by AVX512-BF16's vcvtneps2bf16, one instruction: nearest even, NaN kept quiet, but a subnormal float
// becomes a zero of its sign (the instruction reads subnormals as zero), where to_bf16_16 rounds it to a subnormal
// bf16 (|x| < 1.2e-38: nothing the attention's operands would miss).
ZL_AVX512BF16_INLINE inline __m256i to_bf16_16_native(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// Lanes j .. j+15 that fall in [a, z).
ZL_AVX512_INLINE inline __mmask16 lanes_in16(int32_t j, int32_t a, int32_t z) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(j),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  return _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(a)) & _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(z));
}

// Stores the lanes of k of v at d (float, or bf16 bits).
ZL_AVX512_INLINE inline void store16(float* d, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(d, k, v); }
ZL_AVX512_INLINE inline void store16(uint16_t* d, __m512 v, __mmask16 k) {
  _mm256_mask_storeu_epi16(d, k, to_bf16_16(v));
}
ZL_AVX512BF16_INLINE inline void store16_native(float* d, __m512 v, __mmask16 k) { _mm512_mask_storeu_ps(d, k, v); }
ZL_AVX512BF16_INLINE inline void store16_native(uint16_t* d, __m512 v, __mmask16 k) {
  _mm256_mask_storeu_epi16(d, k, to_bf16_16_native(v));
}

}  // namespace zerolora::kernels::cpu
#endif
