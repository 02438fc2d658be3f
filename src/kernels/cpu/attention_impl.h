// The attention kernels' implementation, included by attention.cpp once per instruction set (no include
// guard on purpose): ZL_ATTENTION_NS names the copy and ZL_SIMD_BYTES the width of its SIMD registers
// (32: AVX2, 64: AVX-512, compiled under a target pragma). Each copy lives in its own namespace, so the
// two never share a symbol. See attention.cpp for the algorithm.
namespace zerolora::kernels::ZL_ATTENTION_NS {


constexpr int64_t kQTile = 32;  // query rows per block (multiple of the micro-kernel's 4 rows)
constexpr int64_t kKTile = 64;  // keys per block (multiple of the micro-kernel's 16 float columns)

// ---- small GEMM on tiles ---------------------------------------------------------------------------

// One SIMD register of S (GCC/Clang vector extension: ymm with 32 bytes, zmm with 64).
template <typename S>
struct Simd {
  typedef S type __attribute__((vector_size(ZL_SIMD_BYTES)));
  static constexpr int kLanes = int(ZL_SIMD_BYTES / sizeof(S));
};

// C[RB x 2 lanes] (= or +=) A[RB x D] B[D x 2 lanes]: RB x 2 accumulator registers, one broadcast
// of A and two loads of B per step of D.
template <typename S, int RB>
inline void micro_kernel(const S* A, int64_t lda, const S* B, int64_t ldb, int64_t D, S* C, int64_t ldc,
                         bool accumulate) {
  using V = typename Simd<S>::type;
  constexpr int VL = Simd<S>::kLanes;
  V acc[RB][2];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < 2; ++c) {
      if (accumulate)
        std::memcpy(&acc[r][c], C + r * ldc + c * VL, sizeof(V));
      else
        acc[r][c] = V{};
    }
  for (int64_t d = 0; d < D; ++d) {
    V b0, b1;
    std::memcpy(&b0, B + d * ldb, sizeof(V));
    std::memcpy(&b1, B + d * ldb + VL, sizeof(V));
    for (int r = 0; r < RB; ++r) {
      const S a = A[r * lda + d];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < 2; ++c) std::memcpy(C + r * ldc + c * VL, &acc[r][c], sizeof(V));
}

// C[R x N] (= or +=) A[R x D] B[D x N], all row-major with leading dimensions. 4-row x 2-register
// blocks where they fit; leftover rows one at a time, leftover columns by a plain loop.
template <typename S>
void tile_gemm(int64_t R, int64_t N, int64_t D, const S* A, int64_t lda, const S* B, int64_t ldb, S* C,
               int64_t ldc, bool accumulate) {
  constexpr int RB = 4, NC = 2 * Simd<S>::kLanes;
  const int64_t Rv = R / RB * RB, Nv = N / NC * NC;
  for (int64_t c = 0; c < Nv; c += NC) {
    for (int64_t r = 0; r < Rv; r += RB)
      micro_kernel<S, RB>(A + r * lda, lda, B + c, ldb, D, C + r * ldc + c, ldc, accumulate);
    for (int64_t r = Rv; r < R; ++r)
      micro_kernel<S, 1>(A + r * lda, lda, B + c, ldb, D, C + r * ldc + c, ldc, accumulate);
  }
  if (Nv < N)
    for (int64_t r = 0; r < R; ++r) {
      S* cr = C + r * ldc;
      if (!accumulate) std::fill(cr + Nv, cr + N, S(0));
      for (int64_t d = 0; d < D; ++d) {
        const S a = A[r * lda + d];
        const S* b = B + d * ldb;
#pragma omp simd
        for (int64_t c = Nv; c < N; ++c) cr[c] += a * b[c];
      }
    }
}

// ---- layout and checks -------------------------------------------------------------------------------

using Layout = AttentionLayout;

inline Layout check_args(const AttentionShape& s, const int32_t* lengths, const int32_t* kv_begin, const char* fn) {
  return check_attention_args(s, lengths, kv_begin, fn);
}

template <typename S>
struct Scratch {
  std::vector<S> Sb, Pb;     // [kQTile, kKTile] scores -> P or dS; dP
  std::vector<S> PT, dST;    // [kKTile, kQTile] transposes for dV, dK
  std::vector<S> acc, acc2;  // [max(kQTile, kKTile), HD] O or dQ; dK, dV
  std::vector<S> m, l;       // [kQTile] running max and sum of the online softmax
  explicit Scratch(int64_t HD)
      : Sb(kQTile * kKTile), Pb(kQTile * kKTile),
        PT(kKTile * kQTile), dST(kKTile * kQTile), acc(size_t(kKTile * HD)), acc2(size_t(kKTile * HD)),
        m(kQTile), l(kQTile) {}
};

// Enough work (~4 B T^2 NH HD / 2 flops) to pay for waking the thread team?
inline bool worth_threads(const Layout& L) {
  return double(L.B) * double(L.T) * double(L.T) * double(L.NH) * double(L.HD) > 2e6;
}

// K or V transposed once per call, tile by tile: for each (b, kv head g, key tile) a compact
// [HD, kKTile] block holding x[b][kb + j][g][d] at [d][j], zero past the last key, so that the tile
// products read whole tiles with a short leading dimension (kKTile).
template <typename S>
struct Transposed {
  static constexpr int64_t ld = kKTile;
  std::vector<S> data;
  int64_t ntiles, HD, NKV;
  Transposed(const S* x, const Layout& L)
      : data(size_t(L.B * L.NKV * ((L.T + kKTile - 1) / kKTile) * L.HD * kKTile), S(0)),
        ntiles((L.T + kKTile - 1) / kKTile), HD(L.HD), NKV(L.NKV) {
    const int64_t n = L.B * NKV * ntiles;
#pragma omp parallel for schedule(static) if (worth_threads(L))
    for (int64_t i = 0; i < n; ++i) {
      const int64_t bg = i / ntiles, kb = (i % ntiles) * kKTile;
      S* dst = data.data() + i * HD * kKTile;
      for (int64_t j = 0; j < std::min(kKTile, L.T - kb); ++j) {
        const S* row = x + L.kv_off(bg / NKV, kb + j, bg % NKV);
        for (int64_t d = 0; d < HD; ++d) dst[d * kKTile + j] = row[d];
      }
    }
  }
  // the tile starting at key kb (a multiple of kKTile) for (b, kv head g)
  const S* tile(int64_t b, int64_t g, int64_t kb) const {
    return data.data() + ((b * NKV + g) * ntiles + kb / kKTile) * HD * kKTile;
  }
};

// Keys [j0, j1) of the tile starting at kb that query t may see (empty when j0 >= j1).
inline void key_range(const Layout& L, int64_t b, int64_t t, int64_t kb, int64_t ke, int64_t* j0, int64_t* j1) {
  *j0 = std::max(kb, L.lo(b, t)) - kb;
  *j1 = std::min(ke, t + 1) - kb;
}

// Valid query rows of the tile [t0, tend) are [t0, tv); [tv, tend) is right padding.
inline int64_t valid_end(int64_t t0, int64_t tend, int64_t len) { return std::clamp(len, t0, tend); }

inline int64_t first_key_tile(const Layout& L, int64_t b, int64_t t0, int64_t tv) {
  int64_t lo = tv;
  for (int64_t t = t0; t < tv; ++t) lo = std::min(lo, L.lo(b, t));
  return lo / kKTile * kKTile;
}

// P = exp(scale S - lse) and dS = scale P (dP - D) for rows [0, nq) of a block, 0 where masked.
template <typename S>
void probs_and_dscores(S* Sb, S* Pb, const Layout& L, int64_t b, int64_t h, int64_t t0, int64_t nq, int64_t kb,
                       int64_t ke, const S* lse, const S* Dv, S scale) {
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = t0 + i;
    int64_t j0, j1;
    key_range(L, b, t, kb, ke, &j0, &j1);
    const S lse_t = lse[L.lse_off(b, h, t)], D_t = Dv[L.lse_off(b, h, t)];
    S* s = Sb + i * kKTile;
    S* dp = Pb + i * kKTile;
#pragma omp simd
    for (int64_t j = 0; j < kKTile; ++j) {
      const bool in = j >= j0 && j < j1;
      const S p = cpu::select(in, cpu::exp_s<S>(s[j] * scale - lse_t), S(0));
      s[j] = p;
      dp[j] = cpu::select(in, scale * p * (dp[j] - D_t), S(0));
    }
  }
}

// ---- tasks -------------------------------------------------------------------------------------------

template <typename S>
void forward_task(S* out, S* lse, const S* q, const Transposed<S>& kt, const S* v, const Layout& L, int64_t b,
                  int64_t h, int64_t qt, S scale, Scratch<S>& w) {
  const int64_t HD = L.HD, g = h / L.group;
  const int64_t t0 = qt * kQTile, tend = std::min(t0 + kQTile, L.T), tv = valid_end(t0, tend, L.len(b));
  for (int64_t t = tv; t < tend; ++t) {
    std::fill_n(out + L.q_off(b, t, h), HD, S(0));
    lse[L.lse_off(b, h, t)] = S(0);
  }
  const int64_t nq = tv - t0;
  if (nq <= 0) return;
  S *O = w.acc.data(), *Sb = w.Sb.data(), *m = w.m.data(), *l = w.l.data();
  std::fill_n(O, nq * HD, S(0));
  std::fill_n(m, nq, -std::numeric_limits<S>::infinity());
  std::fill_n(l, nq, S(0));
  for (int64_t kb = first_key_tile(L, b, t0, tv); kb < tv; kb += kKTile) {
    const int64_t ke = std::min(kb + kKTile, tv);
    tile_gemm<S>(nq, kKTile, HD, q + L.q_off(b, t0, h), L.q_stride(), kt.tile(b, g, kb), kt.ld, Sb, kKTile, false);
    for (int64_t i = 0; i < nq; ++i) {
      int64_t j0, j1;
      key_range(L, b, t0 + i, kb, ke, &j0, &j1);
      S* s = Sb + i * kKTile;
      if (j0 >= j1) {
        std::fill_n(s, kKTile, S(0));
        continue;
      }
      S mx = -std::numeric_limits<S>::infinity();
      for (int64_t j = j0; j < j1; ++j) mx = std::max(mx, s[j] * scale);
      const S mnew = std::max(m[i], mx);
      const S corr = cpu::exp_s<S>(m[i] - mnew);
      S sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < kKTile; ++j) {
        const S p = cpu::select(j >= j0 && j < j1, cpu::exp_s<S>(s[j] * scale - mnew), S(0));
        s[j] = p;
        sum += p;
      }
      l[i] = l[i] * corr + sum;
      m[i] = mnew;
      if (corr != S(1)) {
        S* o = O + i * HD;
#pragma omp simd
        for (int64_t d = 0; d < HD; ++d) o[d] *= corr;
      }
    }
    tile_gemm<S>(nq, HD, ke - kb, Sb, kKTile, v + L.kv_off(b, kb, g), L.kv_stride(), O, HD, true);
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = t0 + i;
    const S inv = S(1) / l[i];
    S* o = out + L.q_off(b, t, h);
    const S* a = O + i * HD;
#pragma omp simd
    for (int64_t d = 0; d < HD; ++d) o[d] = a[d] * inv;
    lse[L.lse_off(b, h, t)] = m[i] + std::log(l[i]);
  }
}

// dq rows of (b, h) for query tile qt
template <typename S>
void dq_task(S* dq, const S* dout, const S* q, const S* k, const Transposed<S>& kt, const Transposed<S>& vt,
             const S* lse, const S* Dv, const Layout& L, int64_t b, int64_t h, int64_t qt, S scale, Scratch<S>& w) {
  const int64_t HD = L.HD, g = h / L.group;
  const int64_t t0 = qt * kQTile, tend = std::min(t0 + kQTile, L.T), tv = valid_end(t0, tend, L.len(b));
  for (int64_t t = tv; t < tend; ++t) std::fill_n(dq + L.q_off(b, t, h), HD, S(0));
  const int64_t nq = tv - t0;
  if (nq <= 0) return;
  S *dQ = w.acc.data(), *Sb = w.Sb.data(), *Pb = w.Pb.data();
  std::fill_n(dQ, nq * HD, S(0));
  for (int64_t kb = first_key_tile(L, b, t0, tv); kb < tv; kb += kKTile) {
    const int64_t ke = std::min(kb + kKTile, tv);
    tile_gemm<S>(nq, kKTile, HD, q + L.q_off(b, t0, h), L.q_stride(), kt.tile(b, g, kb), kt.ld, Sb, kKTile, false);
    tile_gemm<S>(nq, kKTile, HD, dout + L.q_off(b, t0, h), L.q_stride(), vt.tile(b, g, kb), vt.ld, Pb, kKTile,
                 false);
    probs_and_dscores(Sb, Pb, L, b, h, t0, nq, kb, ke, lse, Dv, scale);
    tile_gemm<S>(nq, HD, ke - kb, Pb, kKTile, k + L.kv_off(b, kb, g), L.kv_stride(), dQ, HD, true);
  }
  for (int64_t i = 0; i < nq; ++i) std::copy_n(dQ + i * HD, HD, dq + L.q_off(b, t0 + i, h));
}

// dk, dv rows of (b, kv head g) for key tile kt; with dq != null also dq += dS K for the queries of the
// tile's blocks (the caller owns those dq rows and zeroed them)
template <typename S>
void dkdv_task(S* dk, S* dv, const S* dout, const S* q, const Transposed<S>& kt, const Transposed<S>& vt,
               const S* lse, const S* Dv, const Layout& L, int64_t b, int64_t g, int64_t ktile, S scale,
               Scratch<S>& w, S* dq = nullptr, const S* k = nullptr) {
  const int64_t HD = L.HD, len = L.len(b);
  const int64_t s0 = ktile * kKTile, send = std::min(s0 + kKTile, L.T), s1 = valid_end(s0, send, len);
  for (int64_t s = s1; s < send; ++s) {  // keys no valid query can see
    std::fill_n(dk + L.kv_off(b, s, g), HD, S(0));
    std::fill_n(dv + L.kv_off(b, s, g), HD, S(0));
  }
  const int64_t nk = s1 - s0;
  if (nk <= 0) return;
  S *dK = w.acc.data(), *dV = w.acc2.data(), *Sb = w.Sb.data(), *Pb = w.Pb.data();
  std::fill_n(dK, nk * HD, S(0));
  std::fill_n(dV, nk * HD, S(0));
  for (int64_t qb = s0 / kQTile * kQTile; qb < len; qb += kQTile) {
    const int64_t t0 = std::max(qb, s0), tq = std::min(qb + kQTile, len), nq = tq - t0;
    bool any = false;  // does some query of the tile see some key of this one (packing)?
    for (int64_t t = t0; t < tq && !any; ++t) any = L.lo(b, t) < s1;
    if (!any) continue;
    for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) {
      const S* Q = q + L.q_off(b, t0, h);
      const S* dO = dout + L.q_off(b, t0, h);
      tile_gemm<S>(nq, kKTile, HD, Q, L.q_stride(), kt.tile(b, g, s0), kt.ld, Sb, kKTile, false);
      tile_gemm<S>(nq, kKTile, HD, dO, L.q_stride(), vt.tile(b, g, s0), vt.ld, Pb, kKTile, false);
      probs_and_dscores(Sb, Pb, L, b, h, t0, nq, s0, s1, lse, Dv, scale);
      S *PT = w.PT.data(), *dST = w.dST.data();
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) {
          PT[j * kQTile + i] = Sb[i * kKTile + j];
          dST[j * kQTile + i] = Pb[i * kKTile + j];
        }
      tile_gemm<S>(nk, HD, nq, PT, kQTile, dO, L.q_stride(), dV, HD, true);
      tile_gemm<S>(nk, HD, nq, dST, kQTile, Q, L.q_stride(), dK, HD, true);
      if (dq)
        tile_gemm<S>(nq, HD, nk, Pb, kKTile, k + L.kv_off(b, s0, g), L.kv_stride(), dq + L.q_off(b, t0, h),
                     L.q_stride(), true);
    }
  }
  for (int64_t j = 0; j < nk; ++j) {
    std::copy_n(dK + j * HD, HD, dk + L.kv_off(b, s0 + j, g));
    std::copy_n(dV + j * HD, HD, dv + L.kv_off(b, s0 + j, g));
  }
}

template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin) {
  const Layout L = check_args(shape, lengths, kv_begin, "attention_forward");
  const S scale = S(1.0 / std::sqrt(double(L.HD)));
  const int64_t nqt = (L.T + kQTile - 1) / kQTile;
  const int64_t ntasks = L.B * L.NH * nqt;
  const Transposed<S> kt(k, L);
#pragma omp parallel if (ntasks > 1 && worth_threads(L))
  {
    Scratch<S> w(L.HD);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t qt = nqt - 1 - task % nqt;  // longest (last) query tiles first
      const int64_t bh = task / nqt;
      forward_task(out, lse, q, kt, v, L, bh / L.NH, bh % L.NH, qt, scale, w);
    }
  }
}

template <typename S>
void attention_backward(S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v, const S* out,
                        const S* lse, const AttentionShape& shape, const int32_t* lengths,
                        const int32_t* kv_begin) {
  const Layout L = check_args(shape, lengths, kv_begin, "attention_backward");
  const S scale = S(1.0 / std::sqrt(double(L.HD)));
  const int64_t HD = L.HD;
  // D[b,h,t] = dout . out (0 on padded rows)
  std::vector<S> Dv(size_t(L.B * L.NH * L.T), S(0));
#pragma omp parallel for schedule(static) collapse(2) if (L.B * L.T * L.NH * HD > 65536)
  for (int64_t b = 0; b < L.B; ++b)
    for (int64_t t = 0; t < L.T; ++t) {
      if (t >= L.len(b)) continue;
      for (int64_t h = 0; h < L.NH; ++h) {
        const S* o = out + L.q_off(b, t, h);
        const S* d = dout + L.q_off(b, t, h);
        S s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < HD; ++i) s += o[i] * d[i];
        Dv[size_t(L.lse_off(b, h, t))] = s;
      }
    }
  const int64_t nqt = (L.T + kQTile - 1) / kQTile, nkt = (L.T + kKTile - 1) / kKTile;
  const int64_t n_dq = L.B * L.NH * nqt, n_dkv = L.B * L.NKV * nkt;
  const Transposed<S> kt(k, L), vt(v, L);
  // One pass when there are at least as many (batch, kv head) tasks as threads: dq accumulates beside dk/dv,
  // so S and dP are computed once per block instead of twice (5 tile products instead of 7). Each task owns
  // the dq rows of its heads and walks the key tiles in order, so the sums are race-free and in a fixed order.
  if (L.B * L.NKV >= int64_t(omp_get_max_threads())) {
#pragma omp parallel if (worth_threads(L))
    {
      Scratch<S> w(HD);
#pragma omp for schedule(dynamic, 1)
      for (int64_t bg = 0; bg < L.B * L.NKV; ++bg) {
        const int64_t b = bg / L.NKV, g = bg % L.NKV;
        for (int64_t t = 0; t < L.T; ++t)
          for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) std::fill_n(dq + L.q_off(b, t, h), HD, S(0));
        for (int64_t ktile = 0; ktile < nkt; ++ktile)
          dkdv_task(dk, dv, dout, q, kt, vt, lse, Dv.data(), L, b, g, ktile, scale, w, dq, k);
      }
    }
    return;
  }
  // Otherwise two race-free passes with more, smaller tasks: dk/dv per (b, kv head, key tile), dq per
  // (b, head, query tile).
#pragma omp parallel if (worth_threads(L))
  {
    Scratch<S> w(HD);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t task = 0; task < n_dkv; ++task) {  // first tiles (most queries) first
      const int64_t bg = task / nkt;
      dkdv_task(dk, dv, dout, q, kt, vt, lse, Dv.data(), L, bg / L.NKV, bg % L.NKV, task % nkt, scale, w);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_dq; ++task) {
      const int64_t qt = nqt - 1 - task % nqt, bh = task / nqt;
      dq_task(dq, dout, q, k, kt, vt, lse, Dv.data(), L, bh / L.NH, bh % L.NH, qt, scale, w);
    }
  }
}

}  // namespace zerolora::kernels::ZL_ATTENTION_NS
