// zerolora's own AMX-BF16 GEMMs for the frozen bf16 linears (internal to kernels/cpu, its tests and bench/).
//
// On CPUs with AMX (Sapphire Rapids and later) Debian's oneDNN 2.6 bf16 matmul reached ~230 GFLOP/s per core on
// the TinyLlama shapes, a few percent of what the tile unit does (bench/cpu_matrix_units.cpp,
// docs/PERFORMANCE.md). These kernels multiply straight from the plain row-major bf16 weight W [N, K], so
// no packed copy of the weight is kept (peak RSS unchanged):
//   forward   out^T = W x^T: W's rows are the A tiles as they lie in memory (stride K), x is rounded to bf16
//             and packed per call into B tiles (k pairs interleaved, O(M K)); each 16x16 fp32 result tile
//             is transposed into out (O(M N)).
//   backward  dinp += dout W: bf16(dout) rows are the A tiles; W's row pairs are interleaved into B tiles
//             once per call per 32-column panel (O(N K), used by every M/32 row block).
// Inputs are rounded to bf16 (round to nearest even, vcvtne2ps2bf16: denormal inputs count as zero, as
// in oneDNN's AMX kernels), products and sums are fp32 in the tile unit; only the order of the fp32 sums
// differs from the oneDNN path.
#pragma once
#include <cstdint>

namespace zerolora::kernels::cpu {

// The CPU has AMX-BF16 and AVX512-BF16 and Linux granted this process the AMX tile state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); asked once per process.
bool amx_supported();

// amx_supported(), oneDNN's effective ISA includes AVX512_CORE_AMX (ONEDNN_MAX_CPU_ISA caps the whole CPU
// backend: a cap below AMX runs what a CPU without AMX runs), ZEROLORA_AMX_GEMM is unset or 1 (0: the frozen
// linears go through oneDNN's own AMX matmul instead, and the bf16 attention products through oneDNN's bf16
// matmul, the engine before these kernels; scripts/test-variants.sh runs that variant too; any other value
// throws core::Error) and not switched off by set_amx_gemm_enabled.
bool amx_gemm_in_use();

// Tests and bench/: switch the AMX kernels off (true = the default) so the oneDNN path runs on an AMX CPU.
void set_amx_gemm_enabled(bool on);

// out[M,N] = bf16(x)[M,K] W^T (accumulate: out +=). W [N,K] bf16 bits, row-major. Needs amx_supported().
void amx_linear_forward(float* out, const float* x, const uint16_t* W, int64_t M, int64_t N, int64_t K,
                        bool accumulate);

// dinp[M,K] += bf16(dout)[M,N] W. Needs amx_supported().
void amx_linear_backward_input(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N,
                               int64_t K);

// Batched bf16 GEMM with fp32 accumulation on the AMX tiles, for attention's products (attention_blocked.cpp):
// for i < batch, C_i[M,N] (= or, with accumulate, +=) A_i[M,K] op(B_i), where X_i = X + i * sX; A row-major
// (lda); B [K,N] (ldb) or, with trans_b, [N,K] (ldb); C row-major fp32 (ldc). A and B are bf16 bits (already
// rounded by the caller): the products and the sums are fp32 in the tile unit, nothing else is rounded, so the
// result differs from another fp32-accumulating bf16 GEMM only in the order of the fp32 sums. B is packed per
// call into the tile unit's pair-interleaved layout (O(K N) per batch element, against O(M K N) products);
// A is read in place when M and K are multiples of 32, else through a zero-padded copy. Threads: a team splits the
// (batch element, 32-column block) items; called inside a parallel region, the calling thread runs it alone.
// Needs amx_supported().
struct AmxGemmShape {
  int64_t batch, M, N, K, lda, ldb, ldc, sa, sb, sc;
  bool trans_b, accumulate;
};
void amx_gemm_bf16(const AmxGemmShape& g, const uint16_t* A, const uint16_t* B, float* C);

// Two products with one output shape, 32 x 32 blocks at a time, the output never written out (attention's
// backward: S = Q K^T and dP = dO V^T, turned into P and dS by the caller while they are in L1): for i < batch and
// every 32-row block m0 and 32-column block n0, C1 = A1_i[m0:m0+32, :] B1_i[n0:n0+32, :]^T and C2 likewise from
// A2_i, B2_i (A [M, K] row-major, lda, stride sa; B [N, K] row-major, ldb, stride sb, as trans_b above) go to
// epilogue(ctx, i, m0, n0, c1, c2) as 32 x 32 fp32 blocks, row-major, rows 32 apart, in the calling thread's
// scratch (valid during the call). Each C entry is the fp32 sum amx_gemm_bf16 forms for the same operands
// (trans_b, not accumulating), bit for bit. M, N and K multiples of 32. Threads as amx_gemm_bf16's (items
// (i, 32-column block) taken dynamically; inside a parallel region the calling thread runs it alone); the
// epilogue runs on the thread that computed the block. Needs amx_supported().
struct AmxBlockShape {
  int64_t batch, M, N, K, lda, ldb, sa, sb;
};
using AmxPairEpilogue = void (*)(void* ctx, int64_t i, int64_t m0, int64_t n0, const float* c1, const float* c2);
void amx_gemm_bf16_pair(const AmxBlockShape& g, const uint16_t* A1, const uint16_t* B1, const uint16_t* A2,
                        const uint16_t* B2, AmxPairEpilogue epilogue, void* ctx);

// One product a block of 32 rows at a time with all N columns (attention's forward: S = Q K^T, whose softmax needs
// a row's scores over the whole key chunk): for i < batch and every 32-row block m0, C = A_i[m0:m0+32, :] B_i^T
// (shapes as amx_gemm_bf16_pair's) goes to epilogue(ctx, i, m0, c) as a 32 x N fp32 block (row-major, rows N apart)
// in the calling thread's scratch, never written out. The same sums as amx_gemm_bf16's (trans_b, overwriting), bit
// for bit. Items (i, 32-row block) are taken dynamically; a thread packs B_i once per batch element it meets.
using AmxRowsEpilogue = void (*)(void* ctx, int64_t i, int64_t m0, const float* c);
void amx_gemm_bf16_rows(const AmxBlockShape& g, const uint16_t* A, const uint16_t* B, AmxRowsEpilogue epilogue,
                        void* ctx);

// Blocking of both kernels (bench_cpu_matrix_units --amx-blocking P,KC tunes it). Of 4,256 / 4,512 / 8,512 /
// 8,1024 / 16,512 / 2,1024 on the TinyLlama products (1 thread, M 512, Sapphire Rapids VM, loaded), 8,512 beat
// the first default 4,512 on 7 of 8 products and was within noise of the best; at M = 512 its accumulators and
// activation chunk take 1 MiB of a 2 MiB L2.
struct AmxBlocking {
  int64_t panels_per_group = 8;  // 32-row (forward) / 32-column (backward) weight panels sharing one pass
  int64_t k_chunk = 512;         // reduction elements per pass (multiple of 32)
  int64_t rows_per_pass = 512;   // activation rows per pass (multiple of 32): longer inputs are cut into passes of
                                 // this many rows, each reading the weight once, so the accumulators stay in L2
};
AmxBlocking& amx_blocking();

}  // namespace zerolora::kernels::cpu
