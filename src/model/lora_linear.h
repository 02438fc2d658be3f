// A frozen linear layer with an optional LoRA branch (the one choke point every projection goes
// through, as llama.cpp's build_lora_mm):
//   out = x W^T (+ b) + scale * (drop(x) A^T) B^T
// Dropout is counter-based: the keep/drop decision for element (row m, column i) of slot s is a hash of
// (seed, s, m, i), so a recomputation (gradient checkpointing) or the backward pass sees the same mask
// without storing it.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"
#include "model/lora.h"

namespace zerolora::model {

struct LoraBranch {
  const LoraSlot* slot = nullptr;  // null: plain frozen linear
  int slot_index = 0;              // for the dropout hash
  double scale = 1;
  double dropout = 0;              // 0 when not training
  uint64_t dropout_seed = 0;
};

// Per-call scratch: h [M, in] (dropped input) and du [M, r]; sized by the caller's arena.
template <typename S>
struct LoraScratch {
  S* h = nullptr;
  S* du = nullptr;
};

// out [M,N] = x W^T + b + LoRA; u [M,r] (output, saved for backward) = drop(x) A^T.
template <typename S>
void lora_linear_forward(S* out, S* u, const S* x, const kernels::FrozenWeight& w, const LoraBranch& lora,
                         const S* params, LoraScratch<S> scratch, int64_t M);

// dx [M,K] (+=) through W and the LoRA branch; dA, dB (+=) into grads (when non-null).
template <typename S>
void lora_linear_backward(S* dx, S* grads, const S* dout, const S* x, const S* u, const kernels::FrozenWeight& w,
                          const LoraBranch& lora, const S* params, LoraScratch<S> scratch, int64_t M);

// The LoRA dropout mask of one slot in one pass: counter-based, so the same (seed, slot, element) gives the
// same decision in the forward, the backward and a checkpointed recompute, with no mask stored. Element
// n = m * in + i is dropped when the top 24 bits of a 32-bit hash of (n, seed, slot) fall below p * 2^24.
// All-integer 32-bit arithmetic (murmur3's finaliser twice), so the mask loops vectorise.
struct DropoutMask {
  uint32_t key_lo = 0, key_hi = 0, threshold = 0;
  float keep_scale = 1.0f;  // 1 / (1 - p)
  DropoutMask(uint64_t seed, int slot_index, double p);
  static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
  }
  inline bool keep(uint64_t n) const {
    const uint32_t h = fmix32(fmix32(key_lo ^ uint32_t(n)) ^ key_hi ^ uint32_t(n >> 32));
    return (h >> 8) >= threshold;
  }
  // 0 (dropped) or 1 / (1 - p)
  inline float multiplier(uint64_t n) const { return keep(n) ? keep_scale : 0.0f; }
};

// keep-probability mask value for dropout element (m, i) of a slot: 0 (dropped) or 1/(1-p)
double dropout_multiplier(uint64_t seed, int slot_index, int64_t m, int64_t i, int64_t in, double p);

}  // namespace zerolora::model
