// Attention as whole-block GEMMs (the matrix units' way): the same causal GQA attention as the flash
// kernels in attention.cpp, with every product handed to oneDNN in blocks large enough for its AMX /
// AVX-512 kernels, and only the softmax done here.
//
// For each batch row b and kv head g, the G = NH/NKV query heads that read g share its keys, so a block
// of R query positions of all G heads is one GEMM operand of M = G*R rows (row hl*R + i is head
// g*G + hl at position t0 + i). The keys [ks, ke) the block may see (multiples of kKeyAlign) are taken
// kKeyChunk at a time, so a chunk's scores stay in L2 and there are few distinct GEMM shapes:
//   forward   per chunk: S = Q K^T, online softmax (running max m and sum l per row, O rescaled),
//             O += P V;  then O /= l, lse = m + log l
//   backward  per chunk: S = Q K^T, dP = dO V^T, P = exp(scale S - lse), dS = scale P (dP - D)
//             (D = dO.O), dQ += dS K, dV^T += dO^T P, dK^T += Q^T dS
// dK and dV are accumulated transposed ([HD, T] per (b, g)), so that every GEMM reads its left operand
// plainly and no M x N matrix is ever transposed. Scratch: [M, kKeyChunk] and [HD, T] buffers, linear
// in T; no T x T matrix. Threads: oneDNN splits each product; the softmax passes split the rows.
//
// Operands are float (sgemm) or bf16 (oneDNN's bf16 matmul with fp32 accumulation; on CPUs without a
// native one, the bf16 operands are widened and multiplied by sgemm: the same products, summed in
// another order). bf16 rounds q, k, v, dout, P and dS, as PyTorch's autocast attention does; the
// softmax, lse, D and every accumulation stay fp32.
#include <omp.h>

#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/onednn.h"

namespace zerolora::kernels {

namespace {

using dnnl::memory;

constexpr int64_t kKeyAlign = 64;   // key ranges start and end on multiples of this
constexpr int64_t kKeyChunk = 512;  // keys per product (a multiple of kKeyAlign): S of a block stays in L2

inline void put(float& d, float x) { d = x; }
inline void put(uint16_t& d, float x) { d = uint16_t(std::bit_cast<uint32_t>(cpu::round_bf16(x)) >> 16); }
inline float get(float x) { return x; }
inline float get(uint16_t x) { return cpu::bf16_bits_to_f32(x); }

// ---- GEMM: C[M,N] (= or +=) A[M,K] op(B); A row-major (lda); B [K,N] (ldb) or, with trans_b, [N,K] (ldb)

struct MatmulKey {
  int64_t M, N, K, lda, ldb, ldc;
  bool trans_b, accumulate;
  auto tie() const { return std::tie(M, N, K, lda, ldb, ldc, trans_b, accumulate); }
  bool operator<(const MatmulKey& o) const { return tie() < o.tie(); }
};

struct NativeMatmul {
  dnnl::matmul prim;
  bool ok = false;  // false: oneDNN offers only its reference kernel or nothing: take the widened path
  std::string impl;
};

// The six products, for the record of which oneDNN kernel ran each (benchmarks print it).
enum class Product { QK, PV, dOV, dSK, dOP, QdS };
constexpr const char* kProductName[] = {"S = Q K^T", "O += P V", "dP = dO V^T", "dQ = dS K", "dV^T += dO^T P",
                                        "dK^T += Q^T dS"};

// Primitives by shape, created on first use (attention calls run one at a time: see g_mutex).
std::map<MatmulKey, NativeMatmul> g_native;
std::map<std::string, std::vector<std::string>> g_used;  // product -> kernels it ran on
std::mutex g_mutex;  // one attention call at a time: the scratch below and the primitive cache are shared
std::vector<float> g_wide_a, g_wide_b;

double g_product_seconds = 0;  // wall time inside the products, since the start

void note_kernel(Product p, const std::string& impl) {
  auto& v = g_used[kProductName[int(p)]];
  if (std::find(v.begin(), v.end(), impl) == v.end()) v.push_back(impl);
}

const NativeMatmul& native_matmul(const MatmulKey& k) {
  auto it = g_native.find(k);
  if (it != g_native.end()) return it->second;
  NativeMatmul n;
  try {
    memory::desc a({k.M, k.K}, memory::data_type::bf16, memory::dims{k.lda, 1});
    memory::desc b({k.K, k.N}, memory::data_type::bf16,
                   k.trans_b ? memory::dims{1, k.ldb} : memory::dims{k.ldb, 1});
    memory::desc c({k.M, k.N}, memory::data_type::f32, memory::dims{k.ldc, 1});
    dnnl::primitive_attr attr;
    if (k.accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, cpu::dnnl_engine());
    n.impl = pd.impl_info_str();
    n.ok = n.impl.rfind("ref", 0) != 0;
    if (n.ok) n.prim = dnnl::matmul(pd);
  } catch (const dnnl::error&) {
    n.ok = false;
  }
  return g_native.emplace(k, std::move(n)).first->second;
}

void sgemm(const MatmulKey& k, const float* A, const float* B, float* C) {
  const dnnl_status_t st = dnnl_sgemm('N', k.trans_b ? 'T' : 'N', k.M, k.N, k.K, 1.0f, A, k.lda, B, k.ldb,
                                      k.accumulate ? 1.0f : 0.0f, C, k.ldc);
  core::check(st == dnnl_success, "attention", "dnnl_sgemm failed (status " + std::to_string(int(st)) + ")");
}

void matmul_untimed(Product, const MatmulKey& k, const float* A, const float* B, float* C) { sgemm(k, A, B, C); }

void matmul_untimed(Product p, const MatmulKey& k, const uint16_t* A, const uint16_t* B, float* C) {
  if (cpu::bf16_use_native()) {
    const NativeMatmul& n = native_matmul(k);
    note_kernel(p, n.ok ? n.impl : "widened bf16 through sgemm (oneDNN offers " + (n.impl.empty() ? "none" : n.impl) + ")");
    if (n.ok) {
      auto& eng = cpu::dnnl_engine();
      memory a(memory::desc({k.M, k.K}, memory::data_type::bf16, memory::dims{k.lda, 1}), eng,
               const_cast<uint16_t*>(A));
      memory b(memory::desc({k.K, k.N}, memory::data_type::bf16,
                            k.trans_b ? memory::dims{1, k.ldb} : memory::dims{k.ldb, 1}),
               eng, const_cast<uint16_t*>(B));
      memory c(memory::desc({k.M, k.N}, memory::data_type::f32, memory::dims{k.ldc, 1}), eng, C);
      n.prim.execute(cpu::dnnl_stream(), {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
      cpu::dnnl_stream().wait();
      return;
    }
  }
  // widened: the same bf16 values as f32, dense, then sgemm
  const int64_t brows = k.trans_b ? k.N : k.K, bcols = k.trans_b ? k.K : k.N;
  g_wide_a.resize(size_t(k.M * k.K));
  g_wide_b.resize(size_t(brows * bcols));
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < k.M; ++i)
      for (int64_t j = 0; j < k.K; ++j) g_wide_a[size_t(i * k.K + j)] = get(A[i * k.lda + j]);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < brows; ++i)
      for (int64_t j = 0; j < bcols; ++j) g_wide_b[size_t(i * bcols + j)] = get(B[i * k.ldb + j]);
  }
  MatmulKey dense = k;
  dense.lda = k.K;
  dense.ldb = bcols;
  sgemm(dense, g_wide_a.data(), g_wide_b.data(), C);
}

template <typename E>
void matmul(Product p, const MatmulKey& k, const E* A, const E* B, float* C) {
  const auto start = std::chrono::steady_clock::now();
  matmul_untimed(p, k, A, B, C);
  g_product_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---- geometry -----------------------------------------------------------------------------------

struct Geometry {
  AttentionLayout L;
  int64_t G, R, M, Tpad, nblocks;
  explicit Geometry(const AttentionLayout& l) : L(l) {
    G = L.group;
    R = G >= 8 ? 64 : 128;  // M = G R <= 512 rows per block; R a multiple of kKeyAlign
    M = G * R;
    Tpad = (L.T + kKeyAlign - 1) / kKeyAlign * kKeyAlign;
    nblocks = (L.T + R - 1) / R;
  }
  // Keys [ks, ke) that the valid rows [t0, tv) of a block may see, aligned outward.
  void key_range(int64_t b, int64_t t0, int64_t tv, int64_t* ks, int64_t* ke) const {
    int64_t lo = tv;
    for (int64_t t = t0; t < tv; ++t) lo = std::min(lo, L.lo(b, t));
    *ks = lo / kKeyAlign * kKeyAlign;
    *ke = std::min((tv + kKeyAlign - 1) / kKeyAlign * kKeyAlign, Tpad);
  }
};

template <typename E>
struct Buffers {
  std::vector<E> kg, vg;          // [Tpad, HD] keys / values of (b, g), zero past T
  std::vector<E> qb, dob;         // [M, HD] the block's queries / output gradients
  std::vector<E> qbt, dobt;       // [HD, M] their transposes
  std::vector<E> pb, dsb;         // [M, kKeyChunk] P and dS of a key chunk as GEMM operands
  std::vector<float> s, dp, o;    // [M, kKeyChunk] scores, dP; [M, HD] O or dQ
  std::vector<float> dkt, dvt;    // [HD, Tpad] dK^T, dV^T of (b, g)
  std::vector<float> lse_row, d_row;  // [M] lse and D (backward); running max and sum (forward)
  void size(const Geometry& g, bool backward) {
    const auto HD = size_t(g.L.HD), M = size_t(g.M), T = size_t(g.Tpad);
    const auto C = size_t(kKeyChunk);
    kg.resize(T * HD);
    vg.resize(T * HD);
    qb.resize(M * HD);
    pb.resize(M * C);
    s.resize(M * C);
    o.resize(M * HD);
    lse_row.resize(M);
    d_row.resize(M);
    if (backward) {
      dob.resize(M * HD);
      qbt.resize(HD * M);
      dobt.resize(HD * M);
      dsb.resize(M * C);
      dp.resize(M * C);
      dkt.resize(HD * T);
      dvt.resize(HD * T);
    }
  }
};

template <typename E>
Buffers<E>& buffers() {
  static Buffers<E> b;
  return b;
}

// kg/vg <- k/v of (b, g), rows past T zero
template <typename E>
void pack_kv(Buffers<E>& w, const float* k, const float* v, const Geometry& geo, int64_t b, int64_t g) {
  const auto& L = geo.L;
  const int64_t HD = L.HD;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < geo.Tpad; ++s) {
    E* kd = w.kg.data() + s * HD;
    E* vd = w.vg.data() + s * HD;
    if (s >= L.T) {
      std::fill_n(kd, HD, E(0));
      std::fill_n(vd, HD, E(0));
      continue;
    }
    const float* ks = k + L.kv_off(b, s, g);
    const float* vs = v + L.kv_off(b, s, g);
    for (int64_t d = 0; d < HD; ++d) {
      put(kd[d], ks[d]);
      put(vd[d], vs[d]);
    }
  }
}

template <typename E>
void attention_forward_impl(float* out, float* lse, const float* q, const float* k, const float* v,
                            const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin) {
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_forward"));
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::lock_guard<std::mutex> lock(g_mutex);
  Buffers<E>& w = buffers<E>();
  w.size(geo, false);
  float *m = w.lse_row.data(), *l = w.d_row.data();  // running max and sum of the online softmax
  for (int64_t b = 0; b < L.B; ++b)
    for (int64_t g = 0; g < L.NKV; ++g) {
      pack_kv(w, k, v, geo, b, g);
      for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
        const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
        int64_t ks = 0, ke = 0;
        if (tv > t0) geo.key_range(b, t0, tv, &ks, &ke);
        // Q rows of the block (zero rows past the valid ones); O = 0, m = -inf, l = 0
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
          const int64_t hl = r / R, t = t0 + r % R;
          E* dst = w.qb.data() + r * HD;
          std::fill_n(w.o.data() + r * HD, HD, 0.0f);
          m[r] = kNegInf;
          l[r] = 0.0f;
          if (t >= tv) {
            std::fill_n(dst, HD, E(0));
            continue;
          }
          const float* src = q + L.q_off(b, t, g * geo.G + hl);
          for (int64_t d = 0; d < HD; ++d) put(dst[d], src[d]);
        }
        for (int64_t c0 = ks; c0 < ke; c0 += kKeyChunk) {
          const int64_t N = std::min(kKeyChunk, ke - c0);
          matmul(Product::QK, MatmulKey{M, N, HD, HD, HD, N, true, false}, w.qb.data(), w.kg.data() + c0 * HD,
                 w.s.data());
          // online softmax over this chunk: unnormalised P as an operand, O rescaled
#pragma omp parallel for schedule(static)
          for (int64_t r = 0; r < M; ++r) {
            const int64_t t = t0 + r % R;
            E* p = w.pb.data() + r * N;
            const int64_t j0 = t < tv ? L.lo(b, t) - c0 : 0, j1 = t < tv ? std::min(t + 1 - c0, N) : 0;
            if (j0 >= j1) {  // padding, or no key of this chunk visible
              std::fill_n(p, N, E(0));
              continue;
            }
            float* srow = w.s.data() + r * N;
            float mx = kNegInf;
#pragma omp simd reduction(max : mx)
            for (int64_t j = 0; j < N; ++j) mx = std::max(mx, cpu::select(j >= j0 && j < j1, srow[j] * scale, kNegInf));
            const float mnew = std::max(m[r], mx), corr = cpu::exp_fast(m[r] - mnew);
            float sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < N; ++j) {
              const float e = cpu::select(j >= j0 && j < j1, cpu::exp_fast(srow[j] * scale - mnew), 0.0f);
              put(p[j], e);
              sum += e;
            }
            l[r] = l[r] * corr + sum;
            m[r] = mnew;
            if (corr != 1.0f) {
              float* o = w.o.data() + r * HD;
#pragma omp simd
              for (int64_t d = 0; d < HD; ++d) o[d] *= corr;
            }
          }
          matmul(Product::PV, MatmulKey{M, HD, N, N, HD, HD, false, true}, w.pb.data(), w.vg.data() + c0 * HD,
                 w.o.data());
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
          const int64_t hl = r / R, t = t0 + r % R, h = g * geo.G + hl;
          if (t >= tend) continue;
          float* dst = out + L.q_off(b, t, h);
          if (t >= tv) {
            std::fill_n(dst, HD, 0.0f);
            lse[L.lse_off(b, h, t)] = 0.0f;
            continue;
          }
          const float inv = 1.0f / l[r];
          const float* o = w.o.data() + r * HD;
#pragma omp simd
          for (int64_t d = 0; d < HD; ++d) dst[d] = o[d] * inv;
          lse[L.lse_off(b, h, t)] = m[r] + std::log(l[r]);
        }
      }
    }
}

template <typename E>
void attention_backward_impl(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const float* out, const float* lse, const AttentionShape& shape,
                             const int32_t* lengths, const int32_t* kv_begin) {
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_backward"));
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R, Tp = geo.Tpad;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  std::lock_guard<std::mutex> lock(g_mutex);
  Buffers<E>& w = buffers<E>();
  w.size(geo, true);
  for (int64_t b = 0; b < L.B; ++b)
    for (int64_t g = 0; g < L.NKV; ++g) {
      pack_kv(w, k, v, geo, b, g);
      std::fill(w.dkt.begin(), w.dkt.end(), 0.0f);
      std::fill(w.dvt.begin(), w.dvt.end(), 0.0f);
      for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
        const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
        if (tv <= t0) {  // padding only: dq rows are zero
          for (int64_t hl = 0; hl < geo.G; ++hl)
            for (int64_t t = t0; t < tend; ++t) std::fill_n(dq + L.q_off(b, t, g * geo.G + hl), HD, 0.0f);
          continue;
        }
        int64_t ks, ke;
        geo.key_range(b, t0, tv, &ks, &ke);
        // Q, dO rows and their transposes; D = dO.O and lse per row
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
          const int64_t hl = r / R, t = t0 + r % R, h = g * geo.G + hl;
          E* qd = w.qb.data() + r * HD;
          E* od = w.dob.data() + r * HD;
          const bool valid = t < tv;
          float dsum = 0;
          for (int64_t d = 0; d < HD; ++d) {
            const float qv = valid ? q[L.q_off(b, t, h) + d] : 0.0f;
            const float ov = valid ? dout[L.q_off(b, t, h) + d] : 0.0f;
            if (valid) dsum += ov * out[L.q_off(b, t, h) + d];
            put(qd[d], qv);
            put(od[d], ov);
            w.qbt[size_t(d * M + r)] = qd[d];
            w.dobt[size_t(d * M + r)] = od[d];
          }
          w.d_row[size_t(r)] = dsum;
          w.lse_row[size_t(r)] = valid ? lse[L.lse_off(b, h, t)] : 0.0f;
        }
        for (int64_t c0 = ks; c0 < ke; c0 += kKeyChunk) {
          const int64_t N = std::min(kKeyChunk, ke - c0);
          const E* kc = w.kg.data() + c0 * HD;
          matmul(Product::QK, MatmulKey{M, N, HD, HD, HD, N, true, false}, w.qb.data(), kc, w.s.data());
          matmul(Product::dOV, MatmulKey{M, N, HD, HD, HD, N, true, false}, w.dob.data(), w.vg.data() + c0 * HD,
                 w.dp.data());
          // P = exp(scale S - lse) and dS = scale P (dP - D), masked, as operands
#pragma omp parallel for schedule(static)
          for (int64_t r = 0; r < M; ++r) {
            const int64_t t = t0 + r % R;
            E* p = w.pb.data() + r * N;
            E* ds = w.dsb.data() + r * N;
            const int64_t j0 = t < tv ? L.lo(b, t) - c0 : 0, j1 = t < tv ? std::min(t + 1 - c0, N) : 0;
            if (j0 >= j1) {
              std::fill_n(p, N, E(0));
              std::fill_n(ds, N, E(0));
              continue;
            }
            const float* srow = w.s.data() + r * N;
            const float* dprow = w.dp.data() + r * N;
            const float lr = w.lse_row[size_t(r)], D = w.d_row[size_t(r)];
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) {
              const float pj = cpu::select(j >= j0 && j < j1, cpu::exp_fast(srow[j] * scale - lr), 0.0f);
              put(p[j], pj);
              put(ds[j], scale * pj * (dprow[j] - D));
            }
          }
          matmul(Product::dSK, MatmulKey{M, HD, N, N, HD, HD, false, c0 > ks}, w.dsb.data(), kc, w.o.data());
          matmul(Product::dOP, MatmulKey{HD, N, M, M, N, Tp, false, true}, w.dobt.data(), w.pb.data(),
                 w.dvt.data() + c0);
          matmul(Product::QdS, MatmulKey{HD, N, M, M, N, Tp, false, true}, w.qbt.data(), w.dsb.data(),
                 w.dkt.data() + c0);
        }
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < M; ++r) {
          const int64_t hl = r / R, t = t0 + r % R;
          if (t >= tend) continue;
          float* dst = dq + L.q_off(b, t, g * geo.G + hl);
          if (t >= tv)
            std::fill_n(dst, HD, 0.0f);
          else
            std::copy_n(w.o.data() + r * HD, HD, dst);
        }
      }
      // dK, dV rows of (b, g) from their transposes (keys past the row's length are never seen: zero)
#pragma omp parallel for schedule(static)
      for (int64_t s = 0; s < L.T; ++s) {
        float* kd = dk + L.kv_off(b, s, g);
        float* vd = dv + L.kv_off(b, s, g);
        for (int64_t d = 0; d < HD; ++d) {
          kd[d] = w.dkt[size_t(d * Tp + s)];
          vd[d] = w.dvt[size_t(d * Tp + s)];
        }
      }
    }
}

}  // namespace

void attention_forward_blocked(AttentionOperands ops, float* out, float* lse, const float* q, const float* k,
                               const float* v, const AttentionShape& shape, const int32_t* lengths,
                               const int32_t* kv_begin) {
  if (ops == AttentionOperands::Bf16)
    attention_forward_impl<uint16_t>(out, lse, q, k, v, shape, lengths, kv_begin);
  else
    attention_forward_impl<float>(out, lse, q, k, v, shape, lengths, kv_begin);
}

void attention_backward_blocked(AttentionOperands ops, float* dq, float* dk, float* dv, const float* dout,
                                const float* q, const float* k, const float* v, const float* out, const float* lse,
                                const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin) {
  if (ops == AttentionOperands::Bf16)
    attention_backward_impl<uint16_t>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
  else
    attention_backward_impl<float>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
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
    lines.push_back(line);
  }
  return lines;
}

}  // namespace zerolora::kernels
