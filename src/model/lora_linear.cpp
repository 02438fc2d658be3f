#include "model/lora_linear.h"

#include <algorithm>
#include <cstring>

#include "core/op_profile.h"

namespace zerolora::model {

namespace {
kernels::DropoutMask mask_of(const LoraBranch& lora) {
  return kernels::DropoutMask(lora.dropout_seed, lora.slot_index, lora.dropout);
}
}  // namespace

double dropout_multiplier(uint64_t seed, int slot_index, int64_t m, int64_t i, int64_t in, double p) {
  if (p <= 0) return 1.0;
  return DropoutMask(seed, slot_index, p).multiplier(uint64_t(m * in + i));
}

template <typename S>
void lora_linear_forward(S* out, S* u, const S* x, const kernels::FrozenWeight& w, const LoraBranch& lora,
                         const S* params, LoraScratch<S> scratch, int64_t M, const kernels::Context& ctx) {
  {
    core::OpTimer t(core::Op::FrozenGemm);
    kernels::linear_forward<S>(out, x, w, M, ctx);
  }
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;
  const S* A = params + s.a_offset;  // [r, in]
  const S* B = params + s.b_offset;  // [out, r]
  const S* h = x;
  if (lora.dropout > 0) {
    kernels::dropout_apply<S>(scratch.h, x, M, s.in, mask_of(lora), false, ctx);
    h = scratch.h;
  }
  kernels::gemm<S>(false, true, M, s.r, s.in, S(1), h, s.in, A, s.in, S(0), u, s.r, ctx);
  kernels::gemm<S>(false, true, M, s.out, s.r, S(lora.scale), u, s.r, B, s.r, S(1), out, s.out, ctx);
}

template <typename S>
void lora_linear_backward(S* dx, S* grads, const S* dout, const S* x, const S* u, const kernels::FrozenWeight& w,
                          const LoraBranch& lora, const S* params, LoraScratch<S> scratch, int64_t M,
                          const kernels::Context& ctx) {
  {
    core::OpTimer t(core::Op::FrozenGemmBackward);
    kernels::linear_backward_input<S>(dx, dout, w, M, ctx);
  }
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;
  const S* A = params + s.a_offset;
  const S* B = params + s.b_offset;
  const S sc = S(lora.scale);
  // du = scale * dout B   [M, r]
  kernels::gemm<S>(false, false, M, s.r, s.out, sc, dout, s.out, B, s.r, S(0), scratch.du, s.r, ctx);
  if (grads) {
    // dB += scale * dout^T u   [out, r]
    kernels::gemm<S>(true, false, s.out, s.r, M, sc, dout, s.out, u, s.r, S(1), grads + s.b_offset, s.r, ctx);
    // dA += du^T drop(x)   [r, in]
    const S* h = x;
    if (lora.dropout > 0) {
      kernels::dropout_apply<S>(scratch.h, x, M, s.in, mask_of(lora), false, ctx);
      h = scratch.h;
    }
    kernels::gemm<S>(true, false, s.r, s.in, M, S(1), scratch.du, s.r, h, s.in, S(1), grads + s.a_offset, s.in, ctx);
  }
  if (lora.dropout > 0) {
    // dx += (du A) * mask / (1 - p)
    kernels::gemm<S>(false, false, M, s.in, s.r, S(1), scratch.du, s.r, A, s.in, S(0), scratch.h, s.in, ctx);
    kernels::dropout_apply<S>(dx, scratch.h, M, s.in, mask_of(lora), true, ctx);
  } else {
    kernels::gemm<S>(false, false, M, s.in, s.r, S(1), scratch.du, s.r, A, s.in, S(1), dx, s.in, ctx);
  }
}

template void lora_linear_forward<float>(float*, float*, const float*, const kernels::FrozenWeight&,
                                         const LoraBranch&, const float*, LoraScratch<float>, int64_t, const kernels::Context&);
template void lora_linear_forward<double>(double*, double*, const double*, const kernels::FrozenWeight&,
                                          const LoraBranch&, const double*, LoraScratch<double>, int64_t, const kernels::Context&);
template void lora_linear_backward<float>(float*, float*, const float*, const float*, const float*,
                                          const kernels::FrozenWeight&, const LoraBranch&, const float*,
                                          LoraScratch<float>, int64_t, const kernels::Context&);
template void lora_linear_backward<double>(double*, double*, const double*, const double*, const double*,
                                           const kernels::FrozenWeight&, const LoraBranch&, const double*,
                                           LoraScratch<double>, int64_t, const kernels::Context&);

}  // namespace zerolora::model
