// The LoRA dropout over a run of one row's elements (internal to kernels/cpu): dropout_apply and the fused LoRA
// products (lora_dropout.cpp) share it, so both form each kept value the same way, (keep * scale) * x.
#pragma once
#include <cstdint>

#include "kernels/dropout.h"

namespace zerolora::kernels::cpu {

// out[i] (+)= mask(n0 + i) * x[i] for i < n, single-threaded; n0 is the mask index of x[0] (m * in + column).
template <typename S>
void dropout_run(S* out, const S* x, uint64_t n0, int64_t n, const DropoutMask& mask, bool accumulate);

}  // namespace zerolora::kernels::cpu
