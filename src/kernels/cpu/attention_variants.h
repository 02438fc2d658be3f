// The attention kernels per instruction set, for tests and benchmarks that compare them; the model calls
// attention_forward / attention_backward (kernels.h), which pick the best one this CPU runs.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace zerolora::kernels {

enum class AttentionIsa { Avx2, Avx512 };

// True when this build has the AVX-512 copy (GCC) and the CPU runs it.
bool attention_avx512_available();

template <typename S>
void attention_forward_variant(AttentionIsa isa, S* out, S* lse, const S* q, const S* k, const S* v,
                               const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin);
template <typename S>
void attention_backward_variant(AttentionIsa isa, S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k,
                                const S* v, const S* out, const S* lse, const AttentionShape& shape,
                                const int32_t* lengths, const int32_t* kv_begin);

}  // namespace zerolora::kernels
