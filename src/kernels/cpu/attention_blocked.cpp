// Attention as whole-block GEMMs (the matrix units' way): the same causal GQA attention as the flash
// kernels in attention.cpp, with every product in blocks large enough for the matrix units (zerolora's AMX
// tiles, kernels/cpu/amx_gemm.h, or oneDNN's AMX / AVX-512 kernels), and the softmax done here.
//
// For each batch row b and kv head g, the G = NH/NKV query heads that read g share its keys, so a block
// of R query positions of all G heads is one GEMM operand of M = G*R rows (row hl*R + i is head
// g*G + hl at position t0 + i), and the NKV kv heads are the batch of one batched product. The keys
// [ks, ke) the block may see (multiples of kKeyAlign) are taken a chunk (256 keys) at a time, so the
// scores stay cache-sized and there are few distinct GEMM shapes:
//   forward   per chunk: S = Q K^T, online softmax (running max m and sum l per row, O rescaled),
//             O += P V;  then O /= l, lse = m + log l
//   backward  per chunk: S = Q K^T, dP = dO V^T, P = exp(scale S - lse), dS = scale P (dP - D)
//             (D = dO.O), dQ += dS K, dV^T += dO^T P, dK^T += Q^T dS
// With bf16 operands on zerolora's AMX products (and head size and rows multiples of 32), the scores never leave
// the cache: the forward's S comes 32 rows at a time with all of the chunk's keys and goes through the online
// softmax at once (cpu::amx_gemm_bf16_rows), the backward's S and dP come as 32 x 32 blocks side by side and turn
// into P and dS at once (cpu::amx_gemm_bf16_pair): the same values as the passes over written-out S and dP, which
// every other case runs (attention_blocked_fused_scores switches between them for tests and benchmarks).
// dK and dV are accumulated transposed ([HD, T] per (b, g)), so that every GEMM reads its left operand
// plainly and no M x N matrix is ever transposed. Scratch: [NKV, M, chunk] and [NKV, HD, T] buffers, linear
// in T; no T x T matrix. Threads: with the AMX products and kv heads that divide evenly over the threads,
// each thread runs whole kv heads alone (one parallel region per batch row, no barrier inside:
// heads_per_thread); otherwise each product is split by its kernel and the softmax passes split the rows.
//
// Operands are float (sgemm) or bf16 with fp32 accumulation: zerolora's AMX tile kernel (amx_gemm_bf16) where
// amx_gemm_in_use() (ZEROLORA_AMX_GEMM=0 switches it off), else oneDNN's bf16 matmul; on CPUs without a
// native one, the bf16 operands are widened and multiplied by sgemm: the same products, summed in
// another order. bf16 rounds q, k, v, dout, P and dS, as PyTorch's autocast attention does; the
// softmax, lse, D and every accumulation stay fp32.
#include <omp.h>

#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/onednn.h"
#include "kernels/cpu/vec512.h"

namespace zerolora::kernels {

namespace {

using dnnl::memory;

constexpr int64_t kKeyAlign = 64;  // key ranges start and end on multiples of this
int64_t g_key_chunk = 256;         // keys per product (a multiple of kKeyAlign; tests and benchmarks vary it)

inline void put(float& d, float x) { d = x; }
inline void put(uint16_t& d, float x) { d = uint16_t(std::bit_cast<uint32_t>(cpu::round_bf16(x)) >> 16); }
inline float get(float x) { return x; }
inline float get(uint16_t x) { return cpu::bf16_bits_to_f32(x); }

// ---- batched GEMM: for i < batch, C_i[M,N] (= or +=) A_i[M,K] op(B_i), where X_i = X + i * sX;
// A row-major (lda); B [K,N] (ldb) or, with trans_b, [N,K] (ldb); C row-major (ldc), fp32.

struct MatmulKey {
  int64_t batch, M, N, K, lda, ldb, ldc, sa, sb, sc;
  bool trans_b, accumulate;
  auto tie() const { return std::tie(batch, M, N, K, lda, ldb, ldc, sa, sb, sc, trans_b, accumulate); }
  bool operator<(const MatmulKey& o) const { return tie() < o.tie(); }
};

struct NativeMatmul {
  bool ok = false;         // false: oneDNN offers only its reference kernel or nothing: take the widened path
  bool per_batch = false;  // no batched kernel: one 2-D product per batch element
  std::string impl;
  memory::desc a, b, c;
  dnnl::matmul prim;
};

// The six products, for the record of which oneDNN kernel ran each (benchmarks print it).
enum class Product { QK, PV, dOV, dSK, dOP, QdS };
constexpr const char* kProductName[] = {"S = Q K^T", "O += P V", "dP = dO V^T", "dQ = dS K", "dV^T += dO^T P",
                                        "dK^T += Q^T dS"};

// Primitives by shape, created on first use; one attention call at a time (g_mutex) uses them and the
// record below.
std::mutex g_mutex;
std::map<MatmulKey, NativeMatmul> g_native;
std::map<std::string, std::vector<std::string>> g_used;  // product -> kernels it ran on
double g_product_seconds = 0;                            // wall time inside the products, since the start
double g_seconds_by_product[6] = {};                     // the same per product
bool g_fused_scores = true;                              // attention_blocked_fused_scores

// The record may be written from the threads of one attention call at once (one kv head per thread).
void note_kernel(Product p, const std::string& impl) {
#pragma omp critical(zl_attention_record)
  {
    auto& v = g_used[kProductName[int(p)]];
    if (std::find(v.begin(), v.end(), impl) == v.end()) v.push_back(impl);
  }
}

NativeMatmul create_native(const MatmulKey& k, bool batched) {
  NativeMatmul n;
  try {
    const memory::dims bstr = k.trans_b ? memory::dims{1, k.ldb} : memory::dims{k.ldb, 1};
    if (batched) {
      n.a = memory::desc({k.batch, k.M, k.K}, memory::data_type::bf16, memory::dims{k.sa, k.lda, 1});
      n.b = memory::desc({k.batch, k.K, k.N}, memory::data_type::bf16, memory::dims{k.sb, bstr[0], bstr[1]});
      n.c = memory::desc({k.batch, k.M, k.N}, memory::data_type::f32, memory::dims{k.sc, k.ldc, 1});
    } else {
      n.a = memory::desc({k.M, k.K}, memory::data_type::bf16, memory::dims{k.lda, 1});
      n.b = memory::desc({k.K, k.N}, memory::data_type::bf16, bstr);
      n.c = memory::desc({k.M, k.N}, memory::data_type::f32, memory::dims{k.ldc, 1});
    }
    dnnl::primitive_attr attr;
    if (k.accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(n.a, n.b, n.c), attr, cpu::dnnl_engine());
    n.impl = pd.impl_info_str();
    n.ok = n.impl.rfind("ref", 0) != 0;
    if (n.ok) n.prim = dnnl::matmul(pd);
  } catch (const dnnl::error&) {
    n.ok = false;
  }
  return n;
}

const NativeMatmul& native_matmul(const MatmulKey& k) {
  auto it = g_native.find(k);
  if (it != g_native.end()) return it->second;
  NativeMatmul n = create_native(k, k.batch > 1);
  if (!n.ok && k.batch > 1) {
    NativeMatmul one = create_native(k, false);
    if (one.ok) {
      n = std::move(one);
      n.per_batch = true;
      n.impl += " (per batch element)";
    }
  }
  return g_native.emplace(k, std::move(n)).first->second;
}

void sgemm(const MatmulKey& k, const float* A, const float* B, float* C) {
  for (int64_t i = 0; i < k.batch; ++i) {
    const dnnl_status_t st = dnnl_sgemm('N', k.trans_b ? 'T' : 'N', k.M, k.N, k.K, 1.0f, A + i * k.sa, k.lda,
                                        B + i * k.sb, k.ldb, k.accumulate ? 1.0f : 0.0f, C + i * k.sc, k.ldc);
    core::check(st == dnnl_success, "attention", "dnnl_sgemm failed (status " + std::to_string(int(st)) + ")");
  }
}

void matmul_untimed(Product, const MatmulKey& k, const float* A, const float* B, float* C) { sgemm(k, A, B, C); }

void matmul_untimed(Product p, const MatmulKey& k, const uint16_t* A, const uint16_t* B, float* C) {
  if (cpu::bf16_use_native() && cpu::amx_gemm_in_use()) {  // AMX: zerolora's tile kernel (amx_gemm.h)
    note_kernel(p, "zerolora AMX tiles");
    cpu::amx_gemm_bf16({k.batch, k.M, k.N, k.K, k.lda, k.ldb, k.ldc, k.sa, k.sb, k.sc, k.trans_b, k.accumulate}, A, B,
                       C);
    return;
  }
  if (cpu::bf16_use_native()) {
    const NativeMatmul& n = native_matmul(k);
    note_kernel(p, n.ok ? n.impl : "widened bf16 through sgemm (oneDNN offers " + (n.impl.empty() ? "none" : n.impl) + ")");
    if (n.ok) {
      auto& eng = cpu::dnnl_engine();
      const int64_t runs = n.per_batch ? k.batch : 1;
      for (int64_t i = 0; i < runs; ++i) {
        memory a(n.a, eng, const_cast<uint16_t*>(A + i * k.sa));
        memory b(n.b, eng, const_cast<uint16_t*>(B + i * k.sb));
        memory c(n.c, eng, C + i * k.sc);
        n.prim.execute(cpu::dnnl_stream(), {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
      }
      cpu::dnnl_stream().wait();
      return;
    }
  }
  // widened: the same bf16 values as f32, dense, then sgemm
  const int64_t brows = k.trans_b ? k.N : k.K, bcols = k.trans_b ? k.K : k.N;
  // the calling thread's scratch (no global buffer); the workers below write through the pointers, never
  // through their own thread_local copies
  static thread_local std::vector<float> wide_a, wide_b;
  wide_a.resize(size_t(k.batch * k.M * k.K));
  wide_b.resize(size_t(k.batch * brows * bcols));
  float* const wa = wide_a.data();
  float* const wb = wide_b.data();
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < k.batch * k.M; ++i) {
      const uint16_t* src = A + (i / k.M) * k.sa + (i % k.M) * k.lda;
      for (int64_t j = 0; j < k.K; ++j) wa[size_t(i * k.K + j)] = get(src[j]);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < k.batch * brows; ++i) {
      const uint16_t* src = B + (i / brows) * k.sb + (i % brows) * k.ldb;
      for (int64_t j = 0; j < bcols; ++j) wb[size_t(i * bcols + j)] = get(src[j]);
    }
  }
  MatmulKey dense = k;
  dense.lda = k.K;
  dense.sa = k.M * k.K;
  dense.ldb = bcols;
  dense.sb = brows * bcols;
  sgemm(dense, wa, wb, C);
}

void record_seconds(Product p, double seconds) {
#pragma omp critical(zl_attention_record)
  {
    g_product_seconds += seconds;
    g_seconds_by_product[int(p)] += seconds;
  }
}

template <typename E>
void matmul(Product p, const MatmulKey& k, const E* A, const E* B, float* C) {
  const auto start = std::chrono::steady_clock::now();
  matmul_untimed(p, k, A, B, C);
  record_seconds(p, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

// Whether the scores go through the fused kernels (the forward's S = Q K^T with its softmax through
// cpu::amx_gemm_bf16_rows, the backward's S and dP with P and dS through cpu::amx_gemm_bf16_pair): bf16 operands on
// zerolora's AMX products, head size and rows multiples of 32 (the key chunk is a multiple of kKeyAlign), not
// switched off. Their wall time (products and epilogues) counts as S = Q K^T's.
bool fused_scores_apply(int64_t HD, int64_t M) {
  return g_fused_scores && HD % 32 == 0 && M % 32 == 0 && cpu::bf16_use_native() && cpu::amx_gemm_in_use();
}

void fused_qk_softmax(const cpu::AmxBlockShape& g, const uint16_t* Q, const uint16_t* K, cpu::AmxRowsEpilogue epilogue,
                      void* ctx) {
  const auto start = std::chrono::steady_clock::now();
  note_kernel(Product::QK, "zerolora AMX tiles, the softmax per 32 rows (forward)");
  cpu::amx_gemm_bf16_rows(g, Q, K, epilogue, ctx);
  record_seconds(Product::QK, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

void fused_scores(const cpu::AmxBlockShape& g, const uint16_t* Q, const uint16_t* K, const uint16_t* dO,
                  const uint16_t* V, cpu::AmxPairEpilogue epilogue, void* ctx) {
  const auto start = std::chrono::steady_clock::now();
  note_kernel(Product::QK, "zerolora AMX tiles, P and dS formed per 32 x 32 block (backward)");
  note_kernel(Product::dOV, "zerolora AMX tiles, with S = Q K^T (backward)");
  cpu::amx_gemm_bf16_pair(g, Q, K, dO, V, epilogue, ctx);
  record_seconds(Product::QK, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

// ---- geometry and scratch -------------------------------------------------------------------------

struct Geometry {
  AttentionLayout L;
  int64_t G, R, M, Tp, nblocks, chunk;
  explicit Geometry(const AttentionLayout& l) : L(l) {
    G = L.group;
    R = G >= 8 ? 64 : 128;  // M = G R <= 512 rows per (block, kv head); R a multiple of kKeyAlign
    M = G * R;
    Tp = (L.T + kKeyAlign - 1) / kKeyAlign * kKeyAlign;
    nblocks = (L.T + R - 1) / R;
    chunk = g_key_chunk;
  }
  // Keys [ks, ke) that the valid rows [t0, tv) of a block may see, aligned outward.
  void key_range(int64_t b, int64_t t0, int64_t tv, int64_t* ks, int64_t* ke) const {
    int64_t lo = tv;
    for (int64_t t = t0; t < tv; ++t) lo = std::min(lo, L.lo(b, t));
    *ks = lo / kKeyAlign * kKeyAlign;
    *ke = std::min((tv + kKeyAlign - 1) / kKeyAlign * kKeyAlign, Tp);
  }
  // Row gr = g M + r of a [NKV, M, chunk] buffer (scores, P, dP, dS) holding a chunk of N keys: kv head g's part
  // starts at g M chunk, whatever N (threads running one kv head each may be at chunks of different N), its rows
  // are N apart.
  int64_t chunk_row(int64_t gr, int64_t N) const { return gr / M * M * chunk + gr % M * N; }
  // Row r of kv head g's part of a block is query head g G + r / R at position t0 + r % R.
  int64_t head(int64_t g, int64_t r) const { return g * G + r / R; }
  // The it-th row (it < NKV M) in the order q, dout and out lie in memory within each kv head g (position, then
  // the G heads reading g, which are adjacent there): g M + hl R + i for it = g M + i G + hl. Passes that gather
  // or scatter those rows walk this order: one position's G rows at a time, not one row per page.
  int64_t mem_row(int64_t it) const {
    const int64_t g = it / M, rem = it % M;
    return g * M + (rem % G) * R + rem / G;
  }
};

// Whether the blocked kernels run whole kv heads per thread (one parallel region per batch row: each thread runs
// its heads' passes and products alone, with no barrier inside) rather than splitting every pass and product
// over the team (a barrier after each: ~150 per layer at T 512, and on a machine shared with other jobs each
// may wait for a descheduled thread). Only with zerolora's AMX products (thread-safe, and single-threaded inside
// the region), and where the kv heads divide evenly over the threads (TinyLlama: 4 kv heads, 2 or 4 threads).
template <typename E>
bool heads_per_thread(int64_t H) {
  if constexpr (!std::is_same_v<E, uint16_t>) {
    return false;
  } else {
    const int64_t threads = omp_get_max_threads();
    return threads > 1 && H % threads == 0 && cpu::bf16_use_native() && cpu::amx_gemm_in_use();
  }
}

// Every buffer holds all NKV kv heads (batch index g first), so each product is one batched call.
template <typename E>
struct Buffers {
  std::vector<E> kg, vg;              // [NKV, Tp, HD] keys / values of row b, zero past T
  std::vector<E> qb, dob;             // [NKV, M, HD] the block's queries / output gradients
  std::vector<E> qbt, dobt;           // [NKV, HD, M] their transposes
  std::vector<E> pb, dsb;             // [NKV, M, N] P and dS of a key chunk as operands (N <= chunk)
  std::vector<float> s, dp, o;        // [NKV, M, N] scores, dP; [NKV, M, HD] O or dQ
  std::vector<float> dkt, dvt;        // [NKV, HD, Tp] dK^T, dV^T of row b
  std::vector<float> row_a, row_b;    // [NKV, M] running max and sum (forward); lse and D (backward)
  std::vector<int32_t> key_j0, key_j1;  // [NKV, M] each row's visible keys of the current chunk
  void size(const Geometry& g, bool backward) {
    const auto HD = size_t(g.L.HD), M = size_t(g.M), T = size_t(g.Tp), C = size_t(g.chunk), H = size_t(g.L.NKV);
    auto fit = [](size_t n, auto&... v) { (v.resize(n), ...); };
    fit(H * T * HD, kg, vg);
    fit(H * M * HD, qb, o);
    fit(H * M * C, pb, s);
    fit(H * M, row_a, row_b);
    fit(H * M, key_j0, key_j1);
    if (backward) {
      fit(H * M * HD, dob);
      fit(H * HD * M, qbt, dobt);
      fit(H * M * C, dsb, dp);
      fit(H * HD * T, dkt, dvt);
    }
  }
};

template <typename E>
Buffers<E>& buffers() {
  static Buffers<E> b;
  return b;
}

}  // namespace
}  // namespace zerolora::kernels

// The packing and softmax passes per instruction set, as for the flash kernels (attention.cpp): the AVX2
// baseline, and an AVX-512 copy (GCC) chosen at run time. The products above are oneDNN's either way.
#define ZL_BLOCKED_NS blocked_avx2
#include "kernels/cpu/attention_blocked_impl.h"
#undef ZL_BLOCKED_NS
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq")
#define ZL_BLOCKED_NS blocked_avx512
#define ZL_BLOCKED_VEC512 1  // the row passes in AVX-512 intrinsics (kernels/cpu/vec512.h)
#include "kernels/cpu/attention_blocked_impl.h"
#undef ZL_BLOCKED_VEC512
#undef ZL_BLOCKED_NS
#pragma GCC pop_options
// and one with AVX512-BF16 for the bf16 operands: each 16 values rounded by one vcvtneps2bf16 (~12 % of the bf16
// attention's time on a Sapphire Rapids core, bench/results/2026-12-08-attention-vec512.log)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")
#define ZL_BLOCKED_NS blocked_avx512bf16
#define ZL_BLOCKED_VEC512 1
#define ZL_BLOCKED_BF16CVT 1
#include "kernels/cpu/attention_blocked_impl.h"
#undef ZL_BLOCKED_BF16CVT
#undef ZL_BLOCKED_VEC512
#undef ZL_BLOCKED_NS
#pragma GCC pop_options
#define ZL_HAVE_AVX512_BLOCKED 1
#endif

namespace zerolora::kernels {

namespace {

// The copy to run: AVX-512 only where asked for, built and supported.
bool use_avx512(AttentionIsa isa) {
#ifdef ZL_HAVE_AVX512_BLOCKED
  if (isa == AttentionIsa::Avx512) {
    core::check(attention_avx512_available(), "attention", "this CPU has no AVX-512");
    return true;
  }
#else
  core::check(isa != AttentionIsa::Avx512, "attention", "this build has no AVX-512 attention");
#endif
  return false;
}

}  // namespace

void attention_forward_blocked(AttentionIsa isa, AttentionOperands ops, float* out, float* lse, const float* q,
                               const float* k, const float* v, const AttentionShape& shape, const int32_t* lengths,
                               const int32_t* kv_begin) {
  const bool bf16 = ops == AttentionOperands::Bf16;
#ifdef ZL_HAVE_AVX512_BLOCKED
  if (use_avx512(isa)) {
    if (bf16 && attention_avx512_bf16_available())
      return blocked_avx512bf16::attention_forward_impl<uint16_t>(out, lse, q, k, v, shape, lengths, kv_begin);
    return bf16 ? blocked_avx512::attention_forward_impl<uint16_t>(out, lse, q, k, v, shape, lengths, kv_begin)
                : blocked_avx512::attention_forward_impl<float>(out, lse, q, k, v, shape, lengths, kv_begin);
  }
#else
  use_avx512(isa);
#endif
  bf16 ? blocked_avx2::attention_forward_impl<uint16_t>(out, lse, q, k, v, shape, lengths, kv_begin)
       : blocked_avx2::attention_forward_impl<float>(out, lse, q, k, v, shape, lengths, kv_begin);
}

void attention_backward_blocked(AttentionIsa isa, AttentionOperands ops, float* dq, float* dk, float* dv,
                                const float* dout, const float* q, const float* k, const float* v, const float* out,
                                const float* lse, const AttentionShape& shape, const int32_t* lengths,
                                const int32_t* kv_begin) {
  const bool bf16 = ops == AttentionOperands::Bf16;
#ifdef ZL_HAVE_AVX512_BLOCKED
  if (use_avx512(isa)) {
    if (bf16 && attention_avx512_bf16_available())
      return blocked_avx512bf16::attention_backward_impl<uint16_t>(dq, dk, dv, dout, q, k, v, out, lse, shape,
                                                                   lengths, kv_begin);
    return bf16 ? blocked_avx512::attention_backward_impl<uint16_t>(dq, dk, dv, dout, q, k, v, out, lse, shape,
                                                                     lengths, kv_begin)
                : blocked_avx512::attention_backward_impl<float>(dq, dk, dv, dout, q, k, v, out, lse, shape,
                                                                  lengths, kv_begin);
  }
#else
  use_avx512(isa);
#endif
  bf16 ? blocked_avx2::attention_backward_impl<uint16_t>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths,
                                                         kv_begin)
       : blocked_avx2::attention_backward_impl<float>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths,
                                                      kv_begin);
}

int64_t attention_blocked_key_chunk(int64_t keys) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const int64_t before = g_key_chunk;
  if (keys != 0) {
    core::check(keys > 0 && keys % kKeyAlign == 0, "attention",
                "key chunk " + std::to_string(keys) + " is not a positive multiple of " + std::to_string(kKeyAlign));
    g_key_chunk = keys;
  }
  return before;
}

bool attention_blocked_fused_scores(bool on) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const bool before = g_fused_scores;
  g_fused_scores = on;
  return before;
}

double attention_blocked_product_seconds() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_product_seconds;
}

std::vector<std::string> attention_blocked_native_kernels() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> lines;
  for (const auto& [product, kernels] : g_used) {
    std::string line = product + ":";
    for (const auto& k : kernels) line += " " + k;
    for (int p = 0; p < 6; ++p)
      if (product == kProductName[p]) {
        char buf[48];
        std::snprintf(buf, sizeof buf, " (%.3f s so far)", g_seconds_by_product[p]);
        line += buf;
      }
    lines.push_back(line);
  }
  return lines;
}

}  // namespace zerolora::kernels
