#include "model/lora_linear.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/op_profile.h"


namespace zerolora::model {

namespace {
kernels::DropoutMask mask_of(const LoraBranch& lora) {
  return kernels::DropoutMask(lora.dropout_seed, lora.slot_index, lora.dropout);
}
// The frozen weight with its bias taken from the flat buffer (a shallow copy: the matrix is shared).
template <typename S>
kernels::FrozenWeight with_trainable_bias(const kernels::FrozenWeight& w, const LoraBranch& lora, const S* params) {
  core::check(lora.bias->n == w.N, "--lora_bias", "bias slot size " + std::to_string(lora.bias->n) +
              " does not match the projection's " + std::to_string(w.N), "internal error");
  kernels::FrozenWeight b = w;
  // NF4 weights (--q_lora) too: the linear functions add this bias instead of the one kept with the codes
  b.bias = core::Tensor::borrow(core::dtype_of<S>(), {w.N}, const_cast<S*>(params + lora.bias->offset), nullptr,
                                w.device());
  return b;
}
}  // namespace

template <typename S>
void embedding_lora_forward(S* out, const int32_t* ids, const LoraBranch& lora, const S* params, S* at, S* u,
                            const S* identity, int64_t M, const kernels::Context& ctx) {
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;  // in = V, out = C
  const S* A = params + s.a_offset;  // [r, V]
  const S* B = params + s.b_offset;  // [C, r]
  // at [V, r] = A^T I_r (exact: one product by 1 per element)
  kernels::gemm<S>(true, false, s.in, s.r, s.r, S(1), A, s.in, identity, s.r, S(0), at, s.r, ctx);
  // u [M, r] = rows ids of at (the embedding kernel, which also checks the ids)
  const core::Tensor table = core::Tensor::borrow(core::dtype_of<S>(), {s.in, s.r}, at, nullptr,
                                                  ctx.on_cuda() ? core::Device::Cuda : core::Device::Cpu);
  kernels::embedding_forward<S>(u, ids, table, M, ctx);
  // out [M, C] += scale * u B^T
  kernels::gemm<S>(false, true, M, s.out, s.r, S(lora.scale), u, s.r, B, s.r, S(1), out, s.out, ctx);
}

template <typename S>
void embedding_lora_backward(S* grads, const S* dout, const int32_t* ids, const LoraBranch& lora, const S* params,
                             const S* u, S* du, S* dat, const S* identity, int64_t M, const kernels::Context& ctx) {
  if (!lora.slot || !grads) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;  // in = V, out = C
  const S* B = params + s.b_offset;  // [C, r]
  const S sc = S(lora.scale);
  // dB [C, r] += scale * dout^T u
  kernels::gemm<S>(true, false, s.out, s.r, M, sc, dout, s.out, u, s.r, S(1), grads + s.b_offset, s.r, ctx);
  // du [M, r] = scale * dout B
  kernels::gemm<S>(false, false, M, s.r, s.out, sc, dout, s.out, B, s.r, S(0), du, s.r, ctx);
  // dA^T [V, r]: du's rows added at their ids; then dA [r, V] += I_r (dA^T)^T (exact: products by 1 and 0)
  kernels::fill_zero<S>(dat, s.in * s.r, ctx);
  kernels::embedding_backward<S>(dat, ids, du, M, s.in, s.r, ctx);
  kernels::gemm<S>(false, true, s.r, s.in, s.r, S(1), identity, s.r, dat, s.r, S(1), grads + s.a_offset, s.in, ctx);
}

template void embedding_lora_backward<float>(float*, const float*, const int32_t*, const LoraBranch&, const float*,
                                             const float*, float*, float*, const float*, int64_t,
                                             const kernels::Context&);
template void embedding_lora_backward<double>(double*, const double*, const int32_t*, const LoraBranch&,
                                              const double*, const double*, double*, double*, const double*, int64_t,
                                              const kernels::Context&);

template <typename S>
void embedding_lora_forward(S* out, const int32_t* ids, const LoraBranch& lora, const S* params, int64_t M,
                            const kernels::Context& ctx) {
  if (!lora.slot) return;
  const int64_t V = lora.slot->in, r = lora.slot->r;
  std::shared_ptr<void> mem = kernels::device_alloc(size_t(V * r + M * r + r * r) * sizeof(S), ctx);
  S* at = static_cast<S*>(mem.get());
  S* u = at + V * r;
  S* identity = u + M * r;
  std::vector<S> eye(size_t(r * r), S(0));
  for (int64_t i = 0; i < r; ++i) eye[size_t(i * r + i)] = S(1);
  kernels::copy_to_device(identity, eye.data(), eye.size() * sizeof(S), ctx);
  embedding_lora_forward<S>(out, ids, lora, params, at, u, identity, M, ctx);
  kernels::synchronize(ctx);  // the scratch is freed on return
}

template void embedding_lora_forward<float>(float*, const int32_t*, const LoraBranch&, const float*, int64_t,
                                            const kernels::Context&);
template void embedding_lora_forward<double>(double*, const int32_t*, const LoraBranch&, const double*, int64_t,
                                             const kernels::Context&);
template void embedding_lora_forward<float>(float*, const int32_t*, const LoraBranch&, const float*, float*, float*,
                                            const float*, int64_t, const kernels::Context&);
template void embedding_lora_forward<double>(double*, const int32_t*, const LoraBranch&, const double*, double*,
                                             double*, const double*, int64_t, const kernels::Context&);

double dropout_multiplier(uint64_t seed, int slot_index, int64_t m, int64_t i, int64_t in, double p) {
  if (p <= 0) return 1.0;
  return DropoutMask(seed, slot_index, p).multiplier(uint64_t(m * in + i));
}

namespace {
// With dropout: LoRA's dropout fused into the products with the [M, in] operand where the backend has it
// (kernels.h: CUDA and the host, float); false where it does not apply (double, ZEROLORA_LORA_FUSED=0): then
// dropout_apply + GEMMs run.
template <typename S>
bool fused_dropout_forward(S* u, const S* x, const S* A, int64_t M, const LoraSlot& s, const LoraBranch& lora,
                           const kernels::Context& ctx) {
  return kernels::lora_dropout_forward<S>(u, x, A, M, s.in, s.r, mask_of(lora), ctx);
}

template <typename S>
bool fused_dropout_weight_grad(S* dA, const S* du, const S* x, int64_t M, const LoraSlot& s, const LoraBranch& lora,
                               const kernels::Context& ctx) {
  return kernels::lora_dropout_weight_grad<S>(dA, du, x, M, s.in, s.r, mask_of(lora), ctx);
}

template <typename S>
bool fused_dropout_backward_input(S* dx, const S* du, const S* A, int64_t M, const LoraSlot& s, const LoraBranch& lora,
                                  const kernels::Context& ctx) {
  return kernels::lora_dropout_backward_input<S>(dx, du, A, M, s.in, s.r, mask_of(lora), ctx);
}
}  // namespace

template <typename S>
void lora_linear_forward(S* out, S* u, const S* x, const kernels::FrozenWeight& w, const LoraBranch& lora,
                         const S* params, LoraScratch<S> scratch, int64_t M, const kernels::Context& ctx) {
  {
    core::OpTimer t(core::Op::FrozenGemm);
    if (lora.bias) {
      kernels::linear_forward<S>(out, x, with_trainable_bias(w, lora, params), M, ctx);
    } else {
      kernels::linear_forward<S>(out, x, w, M, ctx);
    }
  }
  if (!lora.slot) return;
  core::OpTimer t(core::Op::Lora);
  const LoraSlot& s = *lora.slot;
  const S* A = params + s.a_offset;  // [r, in]
  const S* B = params + s.b_offset;  // [out, r]
  if (lora.dropout <= 0) {
    kernels::gemm<S>(false, true, M, s.r, s.in, S(1), x, s.in, A, s.in, S(0), u, s.r, ctx);
  } else if (!fused_dropout_forward<S>(u, x, A, M, s, lora, ctx)) {
    kernels::dropout_apply<S>(scratch.h, x, M, s.in, mask_of(lora), false, ctx);
    kernels::gemm<S>(false, true, M, s.r, s.in, S(1), scratch.h, s.in, A, s.in, S(0), u, s.r, ctx);
  }
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
  if (lora.bias && grads) {
    // db [N] += dout^T ones   (the bias' gradient: dout summed over the rows)
    core::OpTimer t(core::Op::Lora);
    kernels::gemm<S>(true, false, w.N, 1, M, S(1), dout, w.N, scratch.ones, 1, S(1), grads + lora.bias->offset, 1,
                     ctx);
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
    if (lora.dropout <= 0) {
      kernels::gemm<S>(true, false, s.r, s.in, M, S(1), scratch.du, s.r, x, s.in, S(1), grads + s.a_offset, s.in, ctx);
    } else if (!fused_dropout_weight_grad<S>(grads + s.a_offset, scratch.du, x, M, s, lora, ctx)) {
      kernels::dropout_apply<S>(scratch.h, x, M, s.in, mask_of(lora), false, ctx);
      kernels::gemm<S>(true, false, s.r, s.in, M, S(1), scratch.du, s.r, scratch.h, s.in, S(1), grads + s.a_offset,
                       s.in, ctx);
    }
  }
  if (lora.dropout > 0) {
    // dx += (du A) * mask / (1 - p)
    if (!fused_dropout_backward_input<S>(dx, scratch.du, A, M, s, lora, ctx)) {
      kernels::gemm<S>(false, false, M, s.in, s.r, S(1), scratch.du, s.r, A, s.in, S(0), scratch.h, s.in, ctx);
      kernels::dropout_apply<S>(dx, scratch.h, M, s.in, mask_of(lora), true, ctx);
    }
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
