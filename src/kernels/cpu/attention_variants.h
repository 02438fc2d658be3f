// The attention kernels per instruction set and algorithm, for tests and benchmarks that compare them;
// the model calls attention_forward / attention_backward (kernels.h), which pick the best one this CPU
// runs for the requested precision.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace zerolora::kernels {

// The index arithmetic of an attention call, shared by every kernel.
struct AttentionLayout {
  int64_t B, T, NH, NKV, HD, group;
  const int32_t* lengths;
  const int32_t* kv_begin;
  int64_t window = 0;  // AttentionShape::window (0: none)

  int64_t len(int64_t b) const { return lengths ? lengths[b] : T; }
  // The first key query t of row b sees: its sample's start (packing), or the sliding window's, the later.
  // Every kernel bounds its key ranges with this, so the window is one more lower bound, nothing else.
  int64_t lo(int64_t b, int64_t t) const {
    const int64_t begin = kv_begin ? kv_begin[b * T + t] : 0;
    return window > 0 ? std::max(begin, t - window + 1) : begin;
  }
  int64_t q_off(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * NH + h) * HD; }
  int64_t kv_off(int64_t b, int64_t s, int64_t g) const { return ((b * T + s) * NKV + g) * HD; }
  int64_t lse_off(int64_t b, int64_t h, int64_t t) const { return (b * NH + h) * T + t; }
  int64_t q_stride() const { return NH * HD; }
  int64_t kv_stride() const { return NKV * HD; }
};

// Validates shape, lengths and kv_begin (core::Error naming fn and the bad value).
AttentionLayout check_attention_args(const AttentionShape& s, const int32_t* lengths, const int32_t* kv_begin,
                                     const char* fn);

// ---- flash kernels (attention.cpp): register-blocked tiles in fp32 (or fp64), per instruction set
enum class AttentionIsa { Avx2, Avx512 };

// True when this build has the AVX-512 copy (GCC), the CPU runs it and oneDNN's effective ISA (capped by
// ONEDNN_MAX_CPU_ISA) includes AVX-512.
bool attention_avx512_available();
// oneDNN's effective ISA includes avx512_core (kernels/cpu/cpu_info.cpp).
bool onednn_isa_has_avx512();
// attention_avx512_available(), the CPU has AVX512-BF16 and oneDNN's effective ISA includes avx512_core_bf16: the
// blocked kernels' AVX-512 copy then rounds bf16 operands with vcvtneps2bf16 (subnormals to zero, see vec512.h).
bool attention_avx512_bf16_available();

template <typename S>
void attention_forward_variant(AttentionIsa isa, S* out, S* lse, const S* q, const S* k, const S* v,
                               const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin);
template <typename S>
void attention_backward_variant(AttentionIsa isa, S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k,
                                const S* v, const S* out, const S* lse, const AttentionShape& shape,
                                const int32_t* lengths, const int32_t* kv_begin);

// ---- blocked kernels (attention_blocked.cpp): whole-block GEMMs through oneDNN, softmax here.
// Bf16: q, k, v, dout, P and dS rounded to bf16, products accumulated in fp32 (zerolora's AMX tiles where
// cpu::amx_gemm_in_use(), else oneDNN's bf16 matmul: AMX / AVX512-BF16 where the CPU has them; elsewhere the
// same bf16 values widened, through sgemm).
// F32: every operand fp32 (sgemm). Same contract as attention_forward / attention_backward.
enum class AttentionOperands { F32, Bf16 };
// isa picks the copy of the softmax and packing passes (AVX2, or AVX-512 where the CPU and build have it).
void attention_forward_blocked(AttentionIsa isa, AttentionOperands ops, float* out, float* lse, const float* q,
                               const float* k, const float* v, const AttentionShape& shape, const int32_t* lengths,
                               const int32_t* kv_begin);
void attention_backward_blocked(AttentionIsa isa, AttentionOperands ops, float* dq, float* dk, float* dv,
                                const float* dout, const float* q, const float* k, const float* v, const float* out,
                                const float* lse, const AttentionShape& shape, const int32_t* lengths,
                                const int32_t* kv_begin);
// The best copy for this CPU (AVX-512 where available), as attention_forward / attention_backward use.
AttentionIsa attention_best_isa();
// The kernels the bf16 blocked products have used so far and the wall seconds spent in each product, a line per
// product (benchmarks print them).
std::vector<std::string> attention_blocked_native_kernels();
// Tests and benchmarks: keys per product of the blocked kernels (a positive multiple of 64; default 256);
// 0 leaves it. Returns the previous value.
int64_t attention_blocked_key_chunk(int64_t keys);
// Wall seconds spent inside the blocked kernels' products so far (the rest of their time is the softmax
// passes and packing).
double attention_blocked_product_seconds();
// Tests and benchmarks: whether the bf16 kernels on zerolora's AMX products take the scores straight from the tile
// unit (the default, true): the forward's softmax per 32 rows of S = Q K^T (cpu::amx_gemm_bf16_rows), the
// backward's P and dS per 32 x 32 block of S and dP = dO V^T (cpu::amx_gemm_bf16_pair), instead of writing S (and
// dP) out and making a pass over them. The results are the same bits either way. Returns the previous value.
bool attention_blocked_fused_scores(bool on);

}  // namespace zerolora::kernels
