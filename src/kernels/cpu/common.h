// Helpers shared by the CPU kernels (internal to kernels/cpu): a vectorisable exp, bf16 rounding,
// and the row-range bookkeeping of attention. Nothing here is part of the kernels.h contract.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace zerolora::kernels::cpu {

// exp(x) for float in plain arithmetic, so that `#pragma omp simd` loops calling it vectorise
// (std::exp does not without -ffast-math). Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6
// polynomial; max relative error ~2 ulp. Returns 0 below -87.3 (incl. -inf), clamps to
// exp(88.37) above, and keeps NaN.
inline float exp_fast(float x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = std::bit_cast<float>((int32_t(n) + 127) << 23);
  float y = p * scale;
  y = x < lo ? 0.0f : y;
  return x != x ? x : y;
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
