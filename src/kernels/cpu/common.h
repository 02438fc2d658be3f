// Helpers shared by the CPU kernels (internal to kernels/cpu): a vectorisable exp, bf16 rounding,
// and the row-range bookkeeping of attention. Nothing here is part of the kernels.h contract.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace zerolora::kernels::cpu {

// c ? a : b through bit masks. Loops stay vectorisable: under the default -ftrapping-math GCC
// will not if-convert a ?: whose arms hold FP arithmetic (it may sink the arithmetic into the
// arm), and a ?: on FP comparisons neither.
inline float select(bool c, float a, float b) {
  const int32_t m = -int32_t(c);
  return std::bit_cast<float>((std::bit_cast<int32_t>(a) & m) | (std::bit_cast<int32_t>(b) & ~m));
}
inline double select(bool c, double a, double b) {
  const int64_t m = -int64_t(c);
  return std::bit_cast<double>((std::bit_cast<int64_t>(a) & m) | (std::bit_cast<int64_t>(b) & ~m));
}

// Monotonic integer key of a float's bits (a < b <=> key(a) < key(b) for non-NaN a, b); its own
// inverse: clamping keys instead of floats keeps loops vectorisable (see select).
inline int32_t float_key(int32_t bits) { return bits ^ ((bits >> 31) & 0x7fffffff); }

// The constants of exp_fast below, shared with its 16-lane form (vec512.h).
inline constexpr float kExpHi = 88.3762626647949f, kExpLo = -87.3365447504f, kExpLog2e = 1.44269504088896341f;
inline constexpr float kExpMagic = 12582912.0f;  // 1.5 * 2^23
inline constexpr float kExpLn2Hi = 0.693359375f, kExpLn2Lo = 2.12194440e-4f;  // ln 2 = hi - lo
inline constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// exp(x) for float in plain arithmetic, so that `#pragma omp simd` loops calling it vectorise
// (std::exp does not without -ffast-math). Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6
// polynomial; max relative error ~2 ulp. Returns 0 below -87.3 (incl. -inf), exp(88.37) above
// (incl. +inf), and keeps NaN.
// Every multiply-add is an explicit std::fma (one rounding), so the bits do not depend on the compiler's
// contraction choices and the 16-lane form gives the same.
inline float exp_fast(float x) {
  const int32_t kx = float_key(std::bit_cast<int32_t>(x));
  const int32_t khi = float_key(std::bit_cast<int32_t>(kExpHi)), klo = float_key(std::bit_cast<int32_t>(kExpLo));
  int32_t kc = kx > khi ? khi : kx;
  kc = kc < klo ? klo : kc;
  const float xc = std::bit_cast<float>(float_key(kc));
  // round to nearest by adding and removing 1.5 * 2^23 (std::floor would be a libm call here);
  // |xc log2 e| < 128 so the trick is exact
  const float n = std::fma(xc, kExpLog2e, kExpMagic) - kExpMagic;
  float r = std::fma(-n, kExpLn2Hi, xc);
  r = std::fma(n, kExpLn2Lo, r);
  float p = kExpP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, kExpP[i]);
  p = std::fma(p * r, r, r) + 1.0f;
  const float y = p * std::bit_cast<float>((int32_t(n) + 127) << 23);
  const bool is_nan = (std::bit_cast<int32_t>(x) & 0x7fffffff) > 0x7f800000;
  return select(is_nan, x, select(kx < klo, 0.0f, y));
}

// exp in the kernel's scalar type: the fast float version, or libm for the double (checking) path.
template <typename S> inline S exp_s(S x);
template <> inline float exp_s<float>(float x) { return exp_fast(x); }
template <> inline double exp_s<double>(double x) { return std::exp(x); }

// f32 -> nearest-even bf16 -> f32 in one step (NaN stays NaN), vectorisable.
inline float round_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  uint32_t nan = (u | 0x00400000u) & 0xffff0000u;
  return std::bit_cast<float>((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

inline float bf16_bits_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

}  // namespace zerolora::kernels::cpu
