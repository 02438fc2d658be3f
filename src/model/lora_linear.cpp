#include "model/lora_linear.h"

#include <algorithm>
#include <cstring>

#include "core/op_profile.h"

namespace zerolora::model {

namespace {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// out = a * drop(x) (+ out when accumulate): dropped elements give 0, kept ones are scaled by 1/(1-p)
template <typename S>
void apply_dropout(S* out, const S* x, const LoraBranch& lora, int64_t M, int64_t in, bool accumulate) {
  const DropoutMask mask(lora.dropout_seed, lora.slot_index, lora.dropout);
  const S scale = S(mask.keep_scale);
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    S* o = out + m * in;
    const S* xr = x + m * in;
    // the element counter in two 32-bit halves (rows never cross 2^32 elements within a row's loop)
    const uint64_t n0 = uint64_t(m * in);
    const uint32_t lo0 = uint32_t(n0), hi = mask.key_hi ^ uint32_t(n0 >> 32);
    if (uint64_t(lo0) + uint64_t(in) > (uint64_t(1) << 32)) {  // this row wraps the low half: rare, scalar
      for (int64_t i = 0; i < in; ++i) {
        const S v = mask.keep(n0 + uint64_t(i)) ? xr[i] * scale : S(0);
        o[i] = accumulate ? o[i] + v : v;
      }
      continue;
    }
    if (accumulate) {
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) {
        const uint32_t h = DropoutMask::fmix32(DropoutMask::fmix32(mask.key_lo ^ (lo0 + uint32_t(i))) ^ hi);
        // keep = (h >> 8) >= threshold as 0/1 without a branch: both sides are below 2^24, so the sign of
        // their difference decides
        const int32_t keep = 1 + (int32_t((h >> 8) - mask.threshold) >> 31);
        o[i] += S(keep) * scale * xr[i];
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) {
        const uint32_t h = DropoutMask::fmix32(DropoutMask::fmix32(mask.key_lo ^ (lo0 + uint32_t(i))) ^ hi);
        const int32_t keep = 1 + (int32_t((h >> 8) - mask.threshold) >> 31);
        o[i] = S(keep) * scale * xr[i];
      }
    }
  }
}

}  // namespace

DropoutMask::DropoutMask(uint64_t seed, int slot_index, double p) {
  const uint64_t k = splitmix64(seed ^ splitmix64(uint64_t(slot_index) * 0x100000001b3ull));
  key_lo = uint32_t(k), key_hi = uint32_t(k >> 32);
  threshold = p <= 0 ? 0u : uint32_t(std::min(p, 1.0) * 16777216.0);
  keep_scale = p <= 0 ? 1.0f : p >= 1 ? 0.0f : float(1.0 / (1.0 - p));
}

double dropout_multiplier(uint64_t seed, int slot_index, int64_t m, int64_t i, int64_t in, double p) {
  if (p <= 0) return 1.0;
  return DropoutMask(seed, slot_index, p).multiplier(uint64_t(m * in + i));
}

template <typename S>
void lora_linear_forward(S* out, S* u, const S* x, const kernels::FrozenWeight& w, const LoraBranch& lora,
                         const S* params, LoraScratch<S> scratch, int64_t M) {
  {
    core::OpTimer t(core::Op::FrozenGemm);
    kernels::linear_forward<S>(out, x, w, M);
  }
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;
  const S* A = params + s.a_offset;  // [r, in]
  const S* B = params + s.b_offset;  // [out, r]
  const S* h = x;
  if (lora.dropout > 0) {
    apply_dropout(scratch.h, x, lora, M, s.in, false);
    h = scratch.h;
  }
  kernels::gemm<S>(false, true, M, s.r, s.in, S(1), h, s.in, A, s.in, S(0), u, s.r);
  kernels::gemm<S>(false, true, M, s.out, s.r, S(lora.scale), u, s.r, B, s.r, S(1), out, s.out);
}

template <typename S>
void lora_linear_backward(S* dx, S* grads, const S* dout, const S* x, const S* u, const kernels::FrozenWeight& w,
                          const LoraBranch& lora, const S* params, LoraScratch<S> scratch, int64_t M) {
  {
    core::OpTimer t(core::Op::FrozenGemmBackward);
    kernels::linear_backward_input<S>(dx, dout, w, M);
  }
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;
  const S* A = params + s.a_offset;
  const S* B = params + s.b_offset;
  const S sc = S(lora.scale);
  // du = scale * dout B   [M, r]
  kernels::gemm<S>(false, false, M, s.r, s.out, sc, dout, s.out, B, s.r, S(0), scratch.du, s.r);
  if (grads) {
    // dB += scale * dout^T u   [out, r]
    kernels::gemm<S>(true, false, s.out, s.r, M, sc, dout, s.out, u, s.r, S(1), grads + s.b_offset, s.r);
    // dA += du^T drop(x)   [r, in]
    const S* h = x;
    if (lora.dropout > 0) {
      apply_dropout(scratch.h, x, lora, M, s.in, false);
      h = scratch.h;
    }
    kernels::gemm<S>(true, false, s.r, s.in, M, S(1), scratch.du, s.r, h, s.in, S(1), grads + s.a_offset, s.in);
  }
  if (lora.dropout > 0) {
    // dx += (du A) * mask / (1 - p)
    kernels::gemm<S>(false, false, M, s.in, s.r, S(1), scratch.du, s.r, A, s.in, S(0), scratch.h, s.in);
    apply_dropout(dx, scratch.h, lora, M, s.in, true);
  } else {
    kernels::gemm<S>(false, false, M, s.in, s.r, S(1), scratch.du, s.r, A, s.in, S(1), dx, s.in);
  }
}

template void lora_linear_forward<float>(float*, float*, const float*, const kernels::FrozenWeight&,
                                         const LoraBranch&, const float*, LoraScratch<float>, int64_t);
template void lora_linear_forward<double>(double*, double*, const double*, const kernels::FrozenWeight&,
                                          const LoraBranch&, const double*, LoraScratch<double>, int64_t);
template void lora_linear_backward<float>(float*, float*, const float*, const float*, const float*,
                                          const kernels::FrozenWeight&, const LoraBranch&, const float*,
                                          LoraScratch<float>, int64_t);
template void lora_linear_backward<double>(double*, double*, const double*, const double*, const double*,
                                           const kernels::FrozenWeight&, const LoraBranch&, const double*,
                                           LoraScratch<double>, int64_t);

}  // namespace zerolora::model
