// Causal grouped-query attention, flash style (FlashAttention-2 on a CPU): the forward streams key
// tiles through an online softmax and keeps only lse = max + log(sum exp) per (query, head); the
// backward recomputes P = exp(score - lse) tile by tile. No T x T buffer anywhere.
//
//   score_ts = scale q_t.k_s for kv_begin[t] <= s <= t,  P = softmax_s(score),  out_t = sum_s P_ts v_s
// Backward, with D_t = dout_t.out_t (= sum_s P_ts dP_ts):
//   dP_ts = dout_t.v_s,  dS_ts = P_ts (dP_ts - D_t)
//   dq_t = scale sum_s dS_ts k_s,  dk_s = scale sum_t dS_ts q_t,  dv_s = sum_t P_ts dout_t
//
// Parallelism: forward over (b, query head, query tile). Backward in two race-free passes: dq over
// (b, query head, query tile) and dk/dv over (b, kv head, key tile), each owning the rows it
// writes (P and dP are computed twice; the price of needing no atomics or per-thread copies).
// Inner loops run over a key tile (scores, vectorised over keys against a transposed K/V tile)
// or over HD (the weighted sums of rows).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/common.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {

constexpr int64_t kQTile = 32;  // query rows per forward / dq task
constexpr int64_t kKTile = 64;  // keys per tile (and per dk/dv task)

struct Layout {
  int64_t B, T, NH, NKV, HD, group;
  const int32_t* lengths;
  const int32_t* kv_begin;

  int64_t len(int64_t b) const { return lengths ? lengths[b] : T; }
  int64_t lo(int64_t b, int64_t t) const { return kv_begin ? kv_begin[b * T + t] : 0; }
  int64_t q_off(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * NH + h) * HD; }
  int64_t kv_off(int64_t b, int64_t s, int64_t g) const { return ((b * T + s) * NKV + g) * HD; }
  int64_t lse_off(int64_t b, int64_t h, int64_t t) const { return (b * NH + h) * T + t; }
};

Layout check_args(const AttentionShape& s, const int32_t* lengths, const int32_t* kv_begin, const char* fn) {
  core::check(s.B >= 0 && s.T >= 0 && s.NH > 0 && s.NKV > 0 && s.HD > 0, fn,
              "bad shape B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " NH=" + std::to_string(s.NH) +
                  " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD));
  core::check(s.NH % s.NKV == 0, fn,
              std::to_string(s.NH) + " query heads are not a multiple of " + std::to_string(s.NKV) + " kv heads",
              "check num_attention_heads / num_key_value_heads in config.json");
  Layout L{s.B, s.T, s.NH, s.NKV, s.HD, s.NH / s.NKV, lengths, kv_begin};
  for (int64_t b = 0; b < s.B; ++b) {
    int64_t n = L.len(b);
    core::check(0 <= n && n <= s.T, fn,
                "lengths[" + std::to_string(b) + "] = " + std::to_string(n) + " outside [0, " + std::to_string(s.T) +
                    "]");
    for (int64_t t = 0; t < n; ++t)
      core::check(0 <= L.lo(b, t) && L.lo(b, t) <= t, fn,
                  "kv_begin[" + std::to_string(b * s.T + t) + "] = " + std::to_string(L.lo(b, t)) +
                      " outside [0, " + std::to_string(t) + "] (a query must see itself)");
  }
  return L;
}

template <typename S>
struct Scratch {
  std::vector<S> Kt, Vt, sc, dp, acc, acc2, m, l;
  explicit Scratch(int64_t HD)
      : Kt(size_t(HD * kKTile)), Vt(size_t(HD * kKTile)), sc(kKTile), dp(kKTile),
        acc(size_t(std::max(kQTile, kKTile) * HD)), acc2(size_t(kKTile * HD)), m(kQTile), l(kQTile) {}
};

// Xt[d][j] = x[key kb + j][d] for j < nk (kv head g of row b): one key tile, transposed.
template <typename S>
void load_transposed(S* Xt, const S* x, const Layout& L, int64_t b, int64_t g, int64_t kb, int64_t nk) {
  for (int64_t j = 0; j < nk; ++j) {
    const S* row = x + L.kv_off(b, kb + j, g);
    for (int64_t d = 0; d < L.HD; ++d) Xt[d * kKTile + j] = row[d];
  }
}

// out[j] = a . x_j for j in [j0, j1), x_j the rows of the transposed tile Xt
template <typename S>
inline void dot_tile(S* out, const S* a, const S* Xt, int64_t HD, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) out[j] = S(0);
  for (int64_t d = 0; d < HD; ++d) {
    const S ad = a[d];
    const S* xt = Xt + d * kKTile;
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) out[j] += ad * xt[j];
  }
}

// y[0..HD) += c * x[0..HD)
template <typename S>
inline void axpy(S* y, S c, const S* x, int64_t HD) {
#pragma omp simd
  for (int64_t d = 0; d < HD; ++d) y[d] += c * x[d];
}

// Valid query rows of tile [t0, tend) are [t0, tv); [tv, tend) is right padding.
inline int64_t valid_end(int64_t t0, int64_t tend, int64_t len) { return std::clamp(len, t0, tend); }

template <typename S>
int64_t min_lo(const Layout& L, int64_t b, int64_t t0, int64_t tv) {
  int64_t lo = tv;
  for (int64_t t = t0; t < tv; ++t) lo = std::min(lo, L.lo(b, t));
  return lo / kKTile * kKTile;
}

template <typename S>
void forward_task(S* out, S* lse, const S* q, const S* k, const S* v, const Layout& L, int64_t b, int64_t h,
                  int64_t qt, S scale, Scratch<S>& w) {
  const int64_t HD = L.HD, g = h / L.group;
  const int64_t t0 = qt * kQTile, tend = std::min(t0 + kQTile, L.T), tv = valid_end(t0, tend, L.len(b));
  for (int64_t t = tv; t < tend; ++t) {
    std::fill_n(out + L.q_off(b, t, h), HD, S(0));
    lse[L.lse_off(b, h, t)] = S(0);
  }
  const int64_t nq = tv - t0;
  if (nq <= 0) return;
  S *acc = w.acc.data(), *sc = w.sc.data();
  std::fill_n(acc, nq * HD, S(0));
  std::fill_n(w.m.data(), nq, -std::numeric_limits<S>::infinity());
  std::fill_n(w.l.data(), nq, S(0));
  for (int64_t kb = min_lo<S>(L, b, t0, tv); kb < tv; kb += kKTile) {
    const int64_t ke = std::min(kb + kKTile, tv);
    load_transposed(w.Kt.data(), k, L, b, g, kb, ke - kb);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t t = t0 + i;
      const int64_t j0 = std::max(kb, L.lo(b, t)) - kb, j1 = std::min(ke, t + 1) - kb;
      if (j0 >= j1) continue;
      dot_tile(sc, q + L.q_off(b, t, h), w.Kt.data(), HD, j0, j1);
      S mx = -std::numeric_limits<S>::infinity();
      for (int64_t j = j0; j < j1; ++j) {
        sc[j] *= scale;
        mx = std::max(mx, sc[j]);
      }
      const S mnew = std::max(w.m[i], mx);
      const S corr = cpu::exp_s<S>(w.m[i] - mnew);
      S sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = j0; j < j1; ++j) {
        const S p = cpu::exp_s<S>(sc[j] - mnew);
        sc[j] = p;
        sum += p;
      }
      w.l[i] = w.l[i] * corr + sum;
      w.m[i] = mnew;
      S* a = acc + i * HD;
      if (corr != S(1))
#pragma omp simd
        for (int64_t d = 0; d < HD; ++d) a[d] *= corr;
      for (int64_t j = j0; j < j1; ++j) axpy(a, sc[j], v + L.kv_off(b, kb + j, g), HD);
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t t = t0 + i;
    const S inv = S(1) / w.l[i];
    S* o = out + L.q_off(b, t, h);
    const S* a = acc + i * HD;
#pragma omp simd
    for (int64_t d = 0; d < HD; ++d) o[d] = a[d] * inv;
    lse[L.lse_off(b, h, t)] = w.m[i] + std::log(w.l[i]);
  }
}

// dq rows of (b, h) for query tile qt
template <typename S>
void dq_task(S* dq, const S* dout, const S* q, const S* k, const S* v, const S* lse, const S* D, const Layout& L,
             int64_t b, int64_t h, int64_t qt, S scale, Scratch<S>& w) {
  const int64_t HD = L.HD, g = h / L.group;
  const int64_t t0 = qt * kQTile, tend = std::min(t0 + kQTile, L.T), tv = valid_end(t0, tend, L.len(b));
  for (int64_t t = tv; t < tend; ++t) std::fill_n(dq + L.q_off(b, t, h), HD, S(0));
  const int64_t nq = tv - t0;
  if (nq <= 0) return;
  S *acc = w.acc.data(), *sc = w.sc.data(), *dp = w.dp.data();
  std::fill_n(acc, nq * HD, S(0));
  for (int64_t kb = min_lo<S>(L, b, t0, tv); kb < tv; kb += kKTile) {
    const int64_t ke = std::min(kb + kKTile, tv);
    load_transposed(w.Kt.data(), k, L, b, g, kb, ke - kb);
    load_transposed(w.Vt.data(), v, L, b, g, kb, ke - kb);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t t = t0 + i;
      const int64_t j0 = std::max(kb, L.lo(b, t)) - kb, j1 = std::min(ke, t + 1) - kb;
      if (j0 >= j1) continue;
      dot_tile(sc, q + L.q_off(b, t, h), w.Kt.data(), HD, j0, j1);
      dot_tile(dp, dout + L.q_off(b, t, h), w.Vt.data(), HD, j0, j1);
      const S lse_t = lse[L.lse_off(b, h, t)], D_t = D[L.lse_off(b, h, t)];
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) sc[j] = scale * cpu::exp_s<S>(sc[j] * scale - lse_t) * (dp[j] - D_t);
      S* a = acc + i * HD;
      for (int64_t j = j0; j < j1; ++j) axpy(a, sc[j], k + L.kv_off(b, kb + j, g), HD);
    }
  }
  for (int64_t i = 0; i < nq; ++i) std::copy_n(acc + i * HD, HD, dq + L.q_off(b, t0 + i, h));
}

// dk, dv rows of (b, kv head g) for key tile kt
template <typename S>
void dkdv_task(S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v, const S* lse, const S* D,
               const Layout& L, int64_t b, int64_t g, int64_t kt, S scale, Scratch<S>& w) {
  const int64_t HD = L.HD, len = L.len(b);
  const int64_t s0 = kt * kKTile, send = std::min(s0 + kKTile, L.T), s1 = valid_end(s0, send, len);
  for (int64_t s = s1; s < send; ++s) {  // keys no valid query can see
    std::fill_n(dk + L.kv_off(b, s, g), HD, S(0));
    std::fill_n(dv + L.kv_off(b, s, g), HD, S(0));
  }
  const int64_t nk = s1 - s0;
  if (nk <= 0) return;
  S *dk_acc = w.acc.data(), *dv_acc = w.acc2.data(), *sc = w.sc.data(), *dp = w.dp.data();
  std::fill_n(dk_acc, nk * HD, S(0));
  std::fill_n(dv_acc, nk * HD, S(0));
  load_transposed(w.Kt.data(), k, L, b, g, s0, nk);
  load_transposed(w.Vt.data(), v, L, b, g, s0, nk);
  for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h)
    for (int64_t t = s0; t < len; ++t) {
      const int64_t j0 = 0, j1 = std::min(s1, t + 1) - s0;
      if (j0 >= j1) continue;
      const S* qt = q + L.q_off(b, t, h);
      const S* dot = dout + L.q_off(b, t, h);
      dot_tile(sc, qt, w.Kt.data(), HD, j0, j1);
      dot_tile(dp, dot, w.Vt.data(), HD, j0, j1);
      const S lse_t = lse[L.lse_off(b, h, t)], D_t = D[L.lse_off(b, h, t)];
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) {
        const S p = cpu::exp_s<S>(sc[j] * scale - lse_t);
        sc[j] = p;
        dp[j] = scale * p * (dp[j] - D_t);
      }
      for (int64_t j = j0; j < j1; ++j) {
        axpy(dv_acc + j * HD, sc[j], dot, HD);
        axpy(dk_acc + j * HD, dp[j], qt, HD);
      }
    }
  for (int64_t j = 0; j < nk; ++j) {
    std::copy_n(dk_acc + j * HD, HD, dk + L.kv_off(b, s0 + j, g));
    std::copy_n(dv_acc + j * HD, HD, dv + L.kv_off(b, s0 + j, g));
  }
}

}  // namespace

template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin) {
  const Layout L = check_args(shape, lengths, kv_begin, "attention_forward");
  const S scale = S(1.0 / std::sqrt(double(L.HD)));
  const int64_t nqt = (L.T + kQTile - 1) / kQTile;
  const int64_t ntasks = L.B * L.NH * nqt;
#pragma omp parallel if (ntasks > 1)
  {
    Scratch<S> w(L.HD);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t qt = nqt - 1 - task % nqt;  // longest (last) query tiles first
      const int64_t bh = task / nqt;
      forward_task(out, lse, q, k, v, L, bh / L.NH, bh % L.NH, qt, scale, w);
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
  std::vector<S> D(size_t(L.B * L.NH * L.T), S(0));
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
        D[size_t(L.lse_off(b, h, t))] = s;
      }
    }
  const int64_t nqt = (L.T + kQTile - 1) / kQTile, nkt = (L.T + kKTile - 1) / kKTile;
  const int64_t n_dq = L.B * L.NH * nqt, n_dkv = L.B * L.NKV * nkt;
#pragma omp parallel if (n_dq + n_dkv > 2)
  {
    Scratch<S> w(HD);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t task = 0; task < n_dq; ++task) {
      const int64_t qt = nqt - 1 - task % nqt, bh = task / nqt;
      dq_task(dq, dout, q, k, v, lse, D.data(), L, bh / L.NH, bh % L.NH, qt, scale, w);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_dkv; ++task) {
      const int64_t kt = task % nkt, bg = task / nkt;
      dkdv_task(dk, dv, dout, q, k, v, lse, D.data(), L, bg / L.NKV, bg % L.NKV, kt, scale, w);
    }
  }
}

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
