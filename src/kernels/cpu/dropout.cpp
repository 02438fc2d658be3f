// LoRA dropout on the CPU: out = mask(x) (or out += mask(x)), the mask of kernels/dropout.h.
#include <algorithm>

#include "kernels/cpu/dropout_rows.h"
#include "kernels/cpu/vec512.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

DropoutMask::DropoutMask(uint64_t seed, int slot_index, double p) {
  const uint64_t k = splitmix64(seed ^ splitmix64(uint64_t(slot_index) * 0x100000001b3ull));
  key_lo = uint32_t(k), key_hi = uint32_t(k >> 32);
  threshold = p <= 0 ? 0u : uint32_t(std::min(p, 1.0) * 16777216.0);
  keep_scale = p <= 0 ? 1.0f : p >= 1 ? 0.0f : float(1.0 / (1.0 - p));
}

namespace cpu {

namespace {

// The loops of dropout_run, inlined into each instruction set's copy below.
template <typename S>
[[gnu::always_inline]] inline void dropout_loops(S* o, const S* xr, uint32_t lo0, uint32_t hi, int64_t n,
                                                 const DropoutMask& mask, bool accumulate) {
  const S scale = S(mask.keep_scale);
  if (accumulate) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t h = DropoutMask::fmix32(DropoutMask::fmix32(mask.key_lo ^ (lo0 + uint32_t(i))) ^ hi);
      // keep = (h >> 8) >= threshold as 0/1 without a branch: both sides are below 2^24, so the sign of
      // their difference decides
      const int32_t keep = 1 + (int32_t((h >> 8) - mask.threshold) >> 31);
      o[i] += S(keep) * scale * xr[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t h = DropoutMask::fmix32(DropoutMask::fmix32(mask.key_lo ^ (lo0 + uint32_t(i))) ^ hi);
      const int32_t keep = 1 + (int32_t((h >> 8) - mask.threshold) >> 31);
      o[i] = S(keep) * scale * xr[i];
    }
  }
}

template <typename S>
void dropout_loops_avx2(S* o, const S* xr, uint32_t lo0, uint32_t hi, int64_t n, const DropoutMask& mask,
                        bool accumulate) {
  dropout_loops(o, xr, lo0, hi, n, mask, accumulate);
}

#ifdef ZL_VEC512
// The same loops on 16 lanes: the hash's 32-bit multiplies are most of the work, 1.5x faster per element than
// on 8 (0.62 -> 0.40 ns per element on a Sapphire Rapids core); the same bits (integer hash, the same float ops).
template <typename S>
ZL_AVX512_FN void dropout_loops_avx512(S* o, const S* xr, uint32_t lo0, uint32_t hi, int64_t n,
                                       const DropoutMask& mask, bool accumulate) {
  dropout_loops(o, xr, lo0, hi, n, mask, accumulate);
}
#endif

}  // namespace

template <typename S>
void dropout_run(S* o, const S* xr, uint64_t n0, int64_t n, const DropoutMask& mask, bool accumulate) {
  // the element counter in two 32-bit halves (the vector loops need the low half not to wrap within the run)
  const uint32_t lo0 = uint32_t(n0), hi = mask.key_hi ^ uint32_t(n0 >> 32);
  if (uint64_t(lo0) + uint64_t(n) > (uint64_t(1) << 32)) {  // this run wraps the low half: rare, scalar
    const S scale = S(mask.keep_scale);
    for (int64_t i = 0; i < n; ++i) {
      const S v = mask.keep(n0 + uint64_t(i)) ? xr[i] * scale : S(0);
      o[i] = accumulate ? o[i] + v : v;
    }
    return;
  }
#ifdef ZL_VEC512
  if (avx512_enabled()) return dropout_loops_avx512(o, xr, lo0, hi, n, mask, accumulate);
#endif
  dropout_loops_avx2(o, xr, lo0, hi, n, mask, accumulate);
}

template void dropout_run<float>(float*, const float*, uint64_t, int64_t, const DropoutMask&, bool);
template void dropout_run<double>(double*, const double*, uint64_t, int64_t, const DropoutMask&, bool);

}  // namespace cpu

template <typename S>
void dropout_apply(S* out, const S* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) cpu::dropout_run<S>(out + m * in, x + m * in, uint64_t(m * in), in, mask, accumulate);
}

template void dropout_apply<float>(float*, const float*, int64_t, int64_t, const DropoutMask&, bool);
template void dropout_apply<double>(double*, const double*, int64_t, int64_t, const DropoutMask&, bool);

}  // namespace zerolora::kernels
