// A frozen linear layer with an optional LoRA branch (the one choke point every projection goes
// through, as llama.cpp's build_lora_mm):
//   out = x W^T (+ b) + scale * (drop(x) A^T) B^T
// Dropout is counter-based: the keep/drop decision for element (row m, column i) of slot s is a hash of
// (seed, s, m, i), so a recomputation (gradient checkpointing) or the backward pass sees the same mask
// without storing it.
#pragma once
#include <cstdint>

#include "kernels/context.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"
#include "model/lora.h"

namespace zerolora::model {

struct LoraBranch {
  const LoraSlot* slot = nullptr;  // null: plain frozen linear
  // --lora_bias: the projection's bias is trainable and lives in the flat buffer (it replaces the frozen
  // weight's bias); null: the frozen bias, if any. Set independently of slot (bias "all").
  const BiasSlot* bias = nullptr;
  int slot_index = 0;              // for the dropout hash
  double scale = 1;
  double dropout = 0;              // 0 when not training
  uint64_t dropout_seed = 0;
};

// Per-call scratch: h [M, in] (dropped input) and du [M, r]; sized by the caller's arena. ones [M] of 1.0:
// the bias gradient as a GEMM (db += dout^T ones), needed only by a backward with a bias slot.
template <typename S>
struct LoraScratch {
  S* h = nullptr;
  S* du = nullptr;
  const S* ones = nullptr;
};

// out [M,N] = x W^T + b + LoRA; u [M,r] (output, saved for backward) = drop(x) A^T.
template <typename S>
void lora_linear_forward(S* out, S* u, const S* x, const kernels::FrozenWeight& w, const LoraBranch& lora,
                         const S* params, LoraScratch<S> scratch, int64_t M,
                         const kernels::Context& ctx = kernels::host());

// dx [M,K] (+=) through W and the LoRA branch; dA, dB and the bias slot's db (+=) into grads (when non-null).
template <typename S>
void lora_linear_backward(S* dx, S* grads, const S* dout, const S* x, const S* u, const kernels::FrozenWeight& w,
                          const LoraBranch& lora, const S* params, LoraScratch<S> scratch, int64_t M,
                          const kernels::Context& ctx = kernels::host());

// The LoRA dropout mask of one slot in one pass (kernels/dropout.h).
using kernels::DropoutMask;

// embed_tokens' LoRA (PEFT's lora.Embedding, no dropout): out [M, C] += scale * A^T[ids] B^T, A [r, V],
// B [C, r]. at [V, r] and u [M, r] are scratch; identity [r, r] the unit matrix (the transpose of A is a GEMM
// with it). All in the context's memory; ids as the embedding kernel reads them.
template <typename S>
void embedding_lora_forward(S* out, const int32_t* ids, const LoraBranch& lora, const S* params, S* at, S* u,
                            const S* identity, int64_t M, const kernels::Context& ctx = kernels::host());
// Its backward (training embed_tokens' LoRA): dB [C, r] += scale * dout^T u, du = scale * dout B [M, r],
// dA [r, V] += (scatter of du's rows to ids)^T. u: the forward's; du [M, r], dat [V, r] scratch.
template <typename S>
void embedding_lora_backward(S* grads, const S* dout, const int32_t* ids, const LoraBranch& lora, const S* params,
                             const S* u, S* du, S* dat, const S* identity, int64_t M,
                             const kernels::Context& ctx = kernels::host());
// The forward with its scratch allocated for this call (the KV-cache decoder: a few rows per call). Nothing when
// the branch has no slot.
template <typename S>
void embedding_lora_forward(S* out, const int32_t* ids, const LoraBranch& lora, const S* params, int64_t M,
                            const kernels::Context& ctx = kernels::host());

// keep-probability mask value for dropout element (m, i) of a slot: 0 (dropped) or 1/(1-p)
double dropout_multiplier(uint64_t seed, int slot_index, int64_t m, int64_t i, int64_t in, double p);

}  // namespace zerolora::model
