// Causal grouped-query attention, flash style (FlashAttention-2 on a CPU): the forward streams key
// tiles through an online softmax and keeps only lse = max + log(sum exp) per (query, head); the
// backward recomputes P = exp(score - lse) tile by tile. No T x T buffer anywhere.
//
//   score_ts = scale q_t.k_s for lo_t <= s <= t,  P = softmax_s(score),  out_t = sum_s P_ts v_s
//   (lo_t = kv_begin[t], or with a sliding window max(kv_begin[t], t - window + 1): AttentionLayout::lo)
// Backward, with D_t = dout_t.out_t (= sum_s P_ts dP_ts):
//   dP_ts = dout_t.v_s,  dS_ts = P_ts (dP_ts - D_t)
//   dq_t = scale sum_s dS_ts k_s,  dk_s = scale sum_t dS_ts q_t,  dv_s = sum_t P_ts dout_t
//
// Work is done per (query tile x key tile) block with small register-blocked GEMMs (tile_gemm):
// S = Q K^T, O += P V, dP = dO V^T, dQ += dS K, dV += P^T dO, dK += dS^T Q.
// Parallelism: forward over (b, query head, query tile). Backward: with at least as many (b, kv head)
// pairs as threads, one pass per pair (dk, dv and the dq rows of its heads, S and dP computed once);
// otherwise two race-free passes: dq over (b, query head, query tile) and dk/dv over (b, kv head, key
// tile), each task owning the rows it writes (S, P and dP computed twice, no atomics or per-thread copies).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/vec512.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

#include "kernels/cpu/attention_variants.h"

// AVX2 (the build's baseline, -march=x86-64-v3) ...
#define ZL_ATTENTION_NS attention_avx2
#define ZL_SIMD_BYTES 32
#include "kernels/cpu/attention_impl.h"
#undef ZL_ATTENTION_NS
#undef ZL_SIMD_BYTES

// ... and AVX-512, chosen at run time where the CPU has it (Sapphire Rapids: ~2x the fp32 lanes). GCC
// applies the target to the functions defined in the region only: the standard-library templates used
// inside were defined above it and keep the baseline target, so nothing AVX-512 leaks into shared
// symbols. Clang builds (sanitizers, fuzzing) keep the AVX2 copy alone.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq")
#define ZL_ATTENTION_NS attention_avx512
#define ZL_SIMD_BYTES 64
#include "kernels/cpu/attention_impl.h"
#undef ZL_ATTENTION_NS
#undef ZL_SIMD_BYTES
#pragma GCC pop_options
#define ZL_HAVE_AVX512_ATTENTION 1
#endif

namespace zerolora::kernels {

AttentionLayout check_attention_args(const AttentionShape& s, const int32_t* lengths, const int32_t* kv_begin,
                                     const char* fn) {
  core::check(s.B >= 0 && s.T >= 0 && s.NH > 0 && s.NKV > 0 && s.HD > 0, fn,
              "bad shape B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " NH=" + std::to_string(s.NH) +
                  " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD));
  core::check(s.NH % s.NKV == 0, fn,
              std::to_string(s.NH) + " query heads are not a multiple of " + std::to_string(s.NKV) + " kv heads",
              "check num_attention_heads / num_key_value_heads in config.json");
  core::check(s.window >= 0, fn, "negative sliding window " + std::to_string(s.window));
  AttentionLayout L{s.B, s.T, s.NH, s.NKV, s.HD, s.NH / s.NKV, lengths, kv_begin, s.window};
  for (int64_t b = 0; b < s.B; ++b) {
    int64_t n = L.len(b);
    core::check(0 <= n && n <= s.T, fn,
                "lengths[" + std::to_string(b) + "] = " + std::to_string(n) + " outside [0, " + std::to_string(s.T) +
                    "]");
    for (int64_t t = 0; t < n; ++t) {
      const int64_t begin = kv_begin ? kv_begin[b * s.T + t] : 0;
      core::check(0 <= begin && begin <= t, fn,
                  "kv_begin[" + std::to_string(b * s.T + t) + "] = " + std::to_string(begin) + " outside [0, " +
                      std::to_string(t) + "] (a query must see itself)");
    }
  }
  return L;
}

bool attention_avx512_available() {
#ifdef ZL_HAVE_AVX512_ATTENTION
  // the CPU has it, and oneDNN's effective ISA includes it: ONEDNN_MAX_CPU_ISA=AVX2 runs the whole CPU backend
  // as an AVX2-only machine would (kernels/cpu_info.h)
  return cpu::avx512_enabled();
#else
  return false;
#endif
}

template <typename S>
void attention_forward_variant(AttentionIsa isa, S* out, S* lse, const S* q, const S* k, const S* v,
                               const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin) {
#ifdef ZL_HAVE_AVX512_ATTENTION
  if (isa == AttentionIsa::Avx512) {
    core::check(attention_avx512_available(), "attention", "this CPU has no AVX-512");
    return attention_avx512::attention_forward<S>(out, lse, q, k, v, shape, lengths, kv_begin);
  }
#else
  core::check(isa != AttentionIsa::Avx512, "attention", "this build has no AVX-512 attention");
#endif
  attention_avx2::attention_forward<S>(out, lse, q, k, v, shape, lengths, kv_begin);
}

template <typename S>
void attention_backward_variant(AttentionIsa isa, S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k,
                                const S* v, const S* out, const S* lse, const AttentionShape& shape,
                                const int32_t* lengths, const int32_t* kv_begin) {
#ifdef ZL_HAVE_AVX512_ATTENTION
  if (isa == AttentionIsa::Avx512) {
    core::check(attention_avx512_available(), "attention", "this CPU has no AVX-512");
    return attention_avx512::attention_backward<S>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
  }
#else
  core::check(isa != AttentionIsa::Avx512, "attention", "this build has no AVX-512 attention");
#endif
  attention_avx2::attention_backward<S>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
}

AttentionIsa attention_best_isa() { return attention_avx512_available() ? AttentionIsa::Avx512 : AttentionIsa::Avx2; }

// bf16 attention runs as blocked GEMMs with bf16 operands where oneDNN has a native bf16 matmul (AMX,
// AVX512-BF16); elsewhere emulating bf16 products costs more than the fp32 flash tiles (2x at T 512 on
// Zen 3), so attention stays fp32 there. fp32 (and the fp64 checking path): flash tiles.
template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin) {
  if constexpr (std::is_same_v<S, float>)
    if (shape.bf16 && cpu::bf16_native_available())
      return attention_forward_blocked(attention_best_isa(), AttentionOperands::Bf16, out, lse, q, k, v, shape, lengths, kv_begin);
  attention_forward_variant<S>(attention_best_isa(), out, lse, q, k, v, shape, lengths, kv_begin);
}

template <typename S>
void attention_backward(S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v, const S* out,
                        const S* lse, const AttentionShape& shape, const int32_t* lengths,
                        const int32_t* kv_begin) {
  if constexpr (std::is_same_v<S, float>)
    if (shape.bf16 && cpu::bf16_native_available())
      return attention_backward_blocked(attention_best_isa(), AttentionOperands::Bf16, dq, dk, dv, dout, q, k, v, out, lse, shape,
                                        lengths, kv_begin);
  attention_backward_variant<S>(attention_best_isa(), dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
}

#define ZL_INSTANTIATE(S)                                                                                   \
  template void attention_forward_variant<S>(AttentionIsa, S*, S*, const S*, const S*, const S*,                \
                                             const AttentionShape&, const int32_t*, const int32_t*);            \
  template void attention_backward_variant<S>(AttentionIsa, S*, S*, S*, const S*, const S*, const S*, const S*, \
                                              const S*, const S*, const AttentionShape&, const int32_t*,        \
                                              const int32_t*);
ZL_INSTANTIATE(float)
ZL_INSTANTIATE(double)
#undef ZL_INSTANTIATE

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       const AttentionShape&, const int32_t*, const int32_t*);
template void attention_forward<double>(double*, double*, const double*, const double*, const double*,
                                        const AttentionShape&, const int32_t*, const int32_t*);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, const float*, const AttentionShape&,
                                        const int32_t*, const int32_t*);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, const double*, const AttentionShape&,
                                         const int32_t*, const int32_t*);

}  // namespace zerolora::kernels
