// The packing and softmax passes of the blocked attention kernels, included by attention_blocked.cpp once
// per instruction set (no include guard on purpose): ZL_BLOCKED_NS names the copy. Everything else (the
// products, geometry, scratch) is shared and defined before the includes. See attention_blocked.cpp.
namespace zerolora::kernels {
namespace {
namespace ZL_BLOCKED_NS {

// kg/vg <- k/v of batch row b for kv heads [g0, g1), rows past T zero
template <typename E>
void pack_kv(Buffers<E>& w, const float* k, const float* v, const Geometry& geo, int64_t b, int64_t g0, int64_t g1,
             bool par) {
  const auto& L = geo.L;
  const int64_t HD = L.HD;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = g0 * geo.Tp; i < g1 * geo.Tp; ++i) {
    const int64_t g = i / geo.Tp, s = i % geo.Tp;
    E* kd = w.kg.data() + i * HD;
    E* vd = w.vg.data() + i * HD;
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

// Rows [r0, r1)'s visible keys [j0, j1) of the key chunk from c0 (N keys) of block t0 (j0 >= j1: none) into the
// buffers' table, once per chunk; every softmax / P, dS pass, fused or not, reads it.
template <typename E>
void fill_key_table(Buffers<E>& w, const Geometry& geo, int64_t b, int64_t t0, int64_t tv, int64_t c0, int64_t N,
                    int64_t r0, int64_t r1) {
  for (int64_t gr = r0; gr < r1; ++gr) {
    const int64_t t = t0 + gr % geo.M % geo.R;
    w.key_j0[size_t(gr)] = t < tv ? int32_t(geo.L.lo(b, t) - c0) : 0;
    w.key_j1[size_t(gr)] = t < tv ? int32_t(std::min(t + 1 - c0, N)) : 0;
  }
}

// One row of the forward's online softmax over a chunk's scores srow[0, n), keys [j0, j1) visible (j0 < j1): P
// (unnormalised, against the running max) into p, the running max m and sum l updated, the row's O rescaled. The
// unfused pass and the fused epilogue both run it, so both form the same values.
#ifdef ZL_BLOCKED_VEC512
// 16 values of a row into an operand buffer: bf16 by vcvtneps2bf16 in the AVX512-BF16 copy, else as round_bf16.
template <typename E>
inline void store_row16(E* d, __m512 v, __mmask16 k) {
#ifdef ZL_BLOCKED_BF16CVT
  cpu::store16_native(d, v, k);
#else
  cpu::store16(d, v, k);
#endif
}
#endif

#ifdef ZL_BLOCKED_VEC512
// A row's visible keys [a, z) of n, clamped to [0, n) (the table's j0 may reach before 0: a sample that began in an
// earlier chunk; the fused backward's 32-key blocks cut [j0, j1) anywhere), and the 16-key vectors [va, vz) holding
// them: the AVX-512 passes compute only those and store zeros elsewhere. kAll: every key visible and n a multiple
// of 16 (most rows), so the lane masks are constants (the same values, without computing them).
struct VisibleRun {
  int32_t n, a, z, va, vz;
  bool all;
  VisibleRun(int64_t n64, int64_t j0, int64_t j1)
      : n(int32_t(n64)), a(int32_t(std::clamp<int64_t>(j0, 0, n64))), z(int32_t(std::clamp<int64_t>(j1, 0, n64))) {
    va = a < z ? a & ~15 : 0;
    vz = a < z ? std::min(n, (z + 15) & ~15) : 0;
    all = a == 0 && z == n && (n & 15) == 0;
  }
  template <bool kAll>
  __mmask16 keys(int32_t j) const { return kAll ? __mmask16(0xffff) : cpu::lanes_in16(j, a, z); }  // visible lanes
  template <bool kAll>
  __mmask16 lanes(int32_t j) const { return kAll ? __mmask16(0xffff) : cpu::lanes_in16(j, 0, n); }  // lanes < n
  template <typename E>
  void zero_outside(E* x) const {
    std::fill_n(x, va, E(0));
    std::fill_n(x + vz, n - vz, E(0));
  }
};

// The AVX-512 copy, 16 keys a step over VisibleRun's vectors; both sums are a register of 16 lanes reduced once,
// and the rescale factor is exp'ed only when the running max moved (exp(0) is 1 exactly).
template <bool kAll, typename E>
inline void softmax_row_run(const float* srow, E* p, const VisibleRun& v, float scale, float& m, float& l, float* o,
                            int64_t HD) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int32_t j = v.va; j < v.vz; j += 16) {
    const __mmask16 k = v.keys<kAll>(j);
    const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, srow + j), vs);
    vmax = _mm512_mask_max_ps(vmax, k, x, vmax);  // x > max ? x : max (a NaN score is not a max, as std::max)
  }
  const float mnew = std::max(m, _mm512_reduce_max_ps(vmax));
  const float corr = m == mnew ? 1.0f : cpu::exp_fast(m - mnew);
  v.zero_outside(p);
  const __m512 vm = _mm512_set1_ps(mnew);
  __m512 vsum = _mm512_setzero_ps();
  for (int32_t j = v.va; j < v.vz; j += 16) {
    const __mmask16 k = v.keys<kAll>(j);
    const __m512 e = _mm512_maskz_mov_ps(k, cpu::exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, srow + j), vs, vm)));
    store_row16(p + j, e, v.lanes<kAll>(j));
    vsum = _mm512_add_ps(vsum, e);
  }
  l = l * corr + _mm512_reduce_add_ps(vsum);
  m = mnew;
  if (corr != 1.0f) {
#pragma omp simd
    for (int64_t d = 0; d < HD; ++d) o[d] *= corr;
  }
}
template <typename E>
inline void softmax_row(const float* srow, E* p, int64_t n, int64_t j0, int64_t j1, float scale, float& m, float& l,
                        float* o, int64_t HD) {
  const VisibleRun v(n, j0, j1);
  v.all ? softmax_row_run<true>(srow, p, v, scale, m, l, o, HD) : softmax_row_run<false>(srow, p, v, scale, m, l, o, HD);
}
#else
template <typename E>
inline void softmax_row(const float* srow, E* p, int64_t n, int64_t j0, int64_t j1, float scale, float& m, float& l,
                        float* o, int64_t HD) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // 32-bit indices: the visibility mask is then one 16-lane compare per vector, not two 8-lane 64-bit ones
  const int32_t n32 = int32_t(n), a = int32_t(j0), z = int32_t(j1);
  float mx = kNegInf;
#pragma omp simd reduction(max : mx)
  for (int32_t j = 0; j < n32; ++j) mx = std::max(mx, cpu::select(j >= a && j < z, srow[j] * scale, kNegInf));
  const float mnew = std::max(m, mx), corr = cpu::exp_fast(m - mnew);
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int32_t j = 0; j < n32; ++j) {
    const float e = cpu::select(j >= a && j < z, cpu::exp_fast(srow[j] * scale - mnew), 0.0f);
    put(p[j], e);
    sum += e;
  }
  l = l * corr + sum;
  m = mnew;
  if (corr != 1.0f) {
#pragma omp simd
    for (int64_t d = 0; d < HD; ++d) o[d] *= corr;
  }
}
#endif

// The fused forward's epilogue (cpu::amx_gemm_bf16_rows): 32 rows of S over the whole key chunk (batch element
// i = kv head g0 + i, rows m0..) -> each row's softmax_row, straight from L1.
template <typename E>
struct SoftmaxEpilogue {
  Buffers<E>* w;
  float *m, *l;
  int64_t M, chunk, g0, N, HD;
  float scale;
  static void run(void* ctx, int64_t i, int64_t m0, const float* c) {
    const SoftmaxEpilogue& e = *static_cast<const SoftmaxEpilogue*>(ctx);
    const int64_t gr0 = (e.g0 + i) * e.M + m0;
    E* p = e.w->pb.data() + (e.g0 + i) * e.M * e.chunk + m0 * e.N;  // Geometry::chunk_row(gr0, N)
    for (int64_t r = 0; r < 32; ++r, p += e.N) {
      const int64_t gr = gr0 + r, a = e.w->key_j0[size_t(gr)], z = e.w->key_j1[size_t(gr)];
      if (a >= z) {  // padding, or no key of this chunk visible
        std::fill_n(p, e.N, E(0));
        continue;
      }
      softmax_row(c + r * e.N, p, e.N, a, z, e.scale, e.m[gr], e.l[gr], e.w->o.data() + gr * e.HD, e.HD);
    }
  }
};

// Batch row b, kv heads [g0, g1): every pass and product covers rows [g0 M, g1 M) of the buffers (the products
// batch the g1 - g0 heads). par: the passes split their rows over the thread team (false inside a parallel region,
// where one thread runs a head alone).
template <typename E>
void forward_heads(float* out, float* lse, const float* q, const float* k, const float* v, const Geometry& geo,
                   Buffers<E>& w, int64_t b, int64_t g0, int64_t g1, bool par) {
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R, nh = g1 - g0, Tp = geo.Tp, r0 = g0 * M, r1 = g1 * M;
  const int64_t SC = M * geo.chunk;  // a kv head's share of the [NKV, M, chunk] buffers (heads may be at
                                     // different key chunks at once)
  const float scale = float(1.0 / std::sqrt(double(HD)));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float *m = w.row_a.data(), *l = w.row_b.data();  // running max and sum of the online softmax, per row
  {
    pack_kv(w, k, v, geo, b, g0, g1, par);
    for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
      const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
      int64_t ks = 0, ke = 0;
      if (tv > t0) geo.key_range(b, t0, tv, &ks, &ke);
      // Q rows (zero past the valid ones); O = 0, m = -inf, l = 0
#pragma omp parallel for schedule(static) if (par)
      for (int64_t it = r0; it < r1; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
        const int64_t gr = geo.mem_row(it);
        const int64_t g = gr / M, r = gr % M, t = t0 + r % R;
        E* dst = w.qb.data() + gr * HD;
        std::fill_n(w.o.data() + gr * HD, HD, 0.0f);
        m[gr] = kNegInf;
        l[gr] = 0.0f;
        if (t >= tv) {
          std::fill_n(dst, HD, E(0));
          continue;
        }
        const float* src = q + L.q_off(b, t, geo.head(g, r));
#pragma omp simd
        for (int64_t d = 0; d < HD; ++d) put(dst[d], src[d]);
      }
      for (int64_t c0 = ks; c0 < ke; c0 += geo.chunk) {
        const int64_t N = std::min(geo.chunk, ke - c0);
        fill_key_table(w, geo, b, t0, tv, c0, N, r0, r1);
        bool fused = false;
        if constexpr (std::is_same_v<E, uint16_t>) {
          if (fused_scores_apply(HD, M)) {  // the softmax straight from 32 rows of S at a time, in L1
            SoftmaxEpilogue<E> ep{&w, m, l, M, geo.chunk, g0, N, HD, scale};
            fused_qk_softmax({nh, M, N, HD, HD, HD, M * HD, Tp * HD}, w.qb.data() + r0 * HD,
                             w.kg.data() + (g0 * Tp + c0) * HD, &SoftmaxEpilogue<E>::run, &ep);
            fused = true;
          }
        }
        if (!fused) {
          matmul(Product::QK, MatmulKey{nh, M, N, HD, HD, HD, N, M * HD, Tp * HD, SC, true, false},
                 w.qb.data() + r0 * HD, w.kg.data() + (g0 * Tp + c0) * HD, w.s.data() + g0 * SC);
          // online softmax over this chunk: unnormalised P as an operand, O rescaled
#pragma omp parallel for schedule(static) if (par)
          for (int64_t gr = r0; gr < r1; ++gr) {
            E* p = w.pb.data() + geo.chunk_row(gr, N);
            const int64_t j0 = w.key_j0[size_t(gr)], j1 = w.key_j1[size_t(gr)];
            if (j0 >= j1) {  // padding, or no key of this chunk visible
              std::fill_n(p, N, E(0));
              continue;
            }
            softmax_row(w.s.data() + geo.chunk_row(gr, N), p, N, j0, j1, scale, m[gr], l[gr], w.o.data() + gr * HD, HD);
          }
        }
        matmul(Product::PV, MatmulKey{nh, M, HD, N, N, HD, HD, SC, Tp * HD, M * HD, false, true},
               w.pb.data() + g0 * SC, w.vg.data() + (g0 * Tp + c0) * HD, w.o.data() + r0 * HD);
      }
#pragma omp parallel for schedule(static) if (par)
      for (int64_t it = r0; it < r1; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
        const int64_t gr = geo.mem_row(it);
        const int64_t g = gr / M, r = gr % M, t = t0 + r % R, h = geo.head(g, r);
        if (t >= tend) continue;
        float* dst = out + L.q_off(b, t, h);
        if (t >= tv) {
          std::fill_n(dst, HD, 0.0f);
          lse[L.lse_off(b, h, t)] = 0.0f;
          continue;
        }
        const float inv = 1.0f / l[gr];
        const float* o = w.o.data() + gr * HD;
#pragma omp simd
        for (int64_t d = 0; d < HD; ++d) dst[d] = o[d] * inv;
        lse[L.lse_off(b, h, t)] = m[gr] + std::log(l[gr]);
      }
    }
  }
}

template <typename E>
void attention_forward_impl(float* out, float* lse, const float* q, const float* k, const float* v,
                            const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_forward"));
  Buffers<E>& w = buffers<E>();
  w.size(geo, false);
  const int64_t H = geo.L.NKV;
  for (int64_t b = 0; b < geo.L.B; ++b) {
    if (heads_per_thread<E>(H)) {
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t g = 0; g < H; ++g) forward_heads(out, lse, q, k, v, geo, w, b, g, g + 1, false);
    } else {
      forward_heads(out, lse, q, k, v, geo, w, b, 0, H, true);
    }
  }
}

// The backward's P = exp(scale S - lse) and dS = scale P (dP - D) over scores srow[0, n) and dP dprow[0, n), keys
// [j0, j1) visible (others 0). The unfused pass and the fused epilogue both run it.
#ifdef ZL_BLOCKED_VEC512
// The AVX-512 copy, 16 keys a step over VisibleRun's vectors.
template <bool kAll, typename E>
inline void scores_to_operands_run(const float* srow, const float* dprow, E* p, E* ds, const VisibleRun& v,
                                   float scale, float lr, float D) {
  v.zero_outside(p);
  v.zero_outside(ds);
  const __m512 vs = _mm512_set1_ps(scale), vl = _mm512_set1_ps(lr), vd = _mm512_set1_ps(D);
  for (int32_t j = v.va; j < v.vz; j += 16) {
    const __mmask16 k = v.keys<kAll>(j), kt = v.lanes<kAll>(j);
    const __m512 pj = _mm512_maskz_mov_ps(k, cpu::exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, srow + j), vs, vl)));
    store_row16(p + j, pj, kt);
    store_row16(ds + j, _mm512_mul_ps(_mm512_mul_ps(vs, pj), _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dprow + j), vd)),
                 kt);
  }
}
template <typename E>
inline void scores_to_operands(const float* srow, const float* dprow, E* p, E* ds, int64_t n, int64_t j0, int64_t j1,
                               float scale, float lr, float D) {
  const VisibleRun v(n, j0, j1);
  v.all ? scores_to_operands_run<true>(srow, dprow, p, ds, v, scale, lr, D)
        : scores_to_operands_run<false>(srow, dprow, p, ds, v, scale, lr, D);
}
#else
template <typename E>
inline void scores_to_operands(const float* srow, const float* dprow, E* p, E* ds, int64_t n, int64_t j0, int64_t j1,
                               float scale, float lr, float D) {
  const int32_t n32 = int32_t(n), a = int32_t(j0), z = int32_t(j1);  // 32-bit: see softmax_row
#pragma omp simd
  for (int32_t j = 0; j < n32; ++j) {
    const float pj = cpu::select(j >= a && j < z, cpu::exp_fast(srow[j] * scale - lr), 0.0f);
    put(p[j], pj);
    put(ds[j], scale * pj * (dprow[j] - D));
  }
}
#endif

// The fused backward's epilogue (cpu::amx_gemm_bf16_pair): one 32 x 32 block of S and dP (batch element i = kv
// head g0 + i, rows m0.., keys n0.. of the chunk) -> P = exp(scale S - lse) and dS = scale P (dP - D), masked, into
// the operand buffers, as the unfused pass below forms them, value for value. The rows' visible keys [j0, j1) of
// the chunk (j0 >= j1: none, the row's P and dS are zeros) come from a table the caller fills once per chunk.
template <typename E>
struct ScoresEpilogue {
  Buffers<E>* w;
  const float *lse_row, *d_row;
  int64_t M, chunk, g0, N;
  float scale;
  static void run(void* ctx, int64_t i, int64_t m0, int64_t n0, const float* s32, const float* dp32) {
    const ScoresEpilogue& e = *static_cast<const ScoresEpilogue*>(ctx);
    const int64_t g = e.g0 + i, gr0 = g * e.M + m0;
    E* p = e.w->pb.data() + g * e.M * e.chunk + m0 * e.N + n0;  // Geometry::chunk_row(gr0, N) + n0
    E* ds = e.w->dsb.data() + g * e.M * e.chunk + m0 * e.N + n0;
    const float scale = e.scale;
    for (int64_t r = 0; r < 32; ++r, p += e.N, ds += e.N) {
      const int64_t gr = gr0 + r, a = e.w->key_j0[size_t(gr)], z = e.w->key_j1[size_t(gr)];
      if (a >= z) {  // padding, or no key of this chunk visible
        std::fill_n(p, 32, E(0));
        std::fill_n(ds, 32, E(0));
        continue;
      }
      scores_to_operands(s32 + r * 32, dp32 + r * 32, p, ds, 32, a - n0, z - n0, scale, e.lse_row[gr], e.d_row[gr]);
    }
  }
};

// Batch row b, kv heads [g0, g1), as forward_heads.
template <typename E>
void backward_heads(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                    const float* out, const float* lse, const Geometry& geo, Buffers<E>& w, int64_t b, int64_t g0,
                    int64_t g1, bool par) {
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R, nh = g1 - g0, Tp = geo.Tp, r0 = g0 * M, r1 = g1 * M;
  const int64_t SC = M * geo.chunk;  // a kv head's share of the [NKV, M, chunk] buffers (heads may be at
                                     // different key chunks at once)
  const float scale = float(1.0 / std::sqrt(double(HD)));
  float *lse_row = w.row_a.data(), *d_row = w.row_b.data();
  {
    pack_kv(w, k, v, geo, b, g0, g1, par);
    std::fill(w.dkt.begin() + g0 * HD * Tp, w.dkt.begin() + g1 * HD * Tp, 0.0f);
    std::fill(w.dvt.begin() + g0 * HD * Tp, w.dvt.begin() + g1 * HD * Tp, 0.0f);
    for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
      const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
      if (tv <= t0) {  // padding only: dq rows (of these heads) are zero
        for (int64_t t = t0; t < tend; ++t)
          std::fill_n(dq + L.q_off(b, t, g0 * L.group), nh * L.group * HD, 0.0f);
        continue;
      }
      int64_t ks, ke;
      geo.key_range(b, t0, tv, &ks, &ke);
      // Q, dO rows; D = dO.O and lse per row; then their transposes, 16 x 16 blocks at a time
#pragma omp parallel for schedule(static) if (par)
      for (int64_t it = r0; it < r1; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
        const int64_t gr = geo.mem_row(it);
        const int64_t g = gr / M, r = gr % M, t = t0 + r % R, h = geo.head(g, r);
        E* qd = w.qb.data() + gr * HD;
        E* od = w.dob.data() + gr * HD;
        if (t >= tv) {
          std::fill_n(qd, HD, E(0));
          std::fill_n(od, HD, E(0));
          d_row[gr] = 0.0f;
          lse_row[gr] = 0.0f;
          continue;
        }
        const float* qs = q + L.q_off(b, t, h);
        const float* os = dout + L.q_off(b, t, h);
        const float* oo = out + L.q_off(b, t, h);
        float dsum = 0;
#pragma omp simd reduction(+ : dsum)
        for (int64_t d = 0; d < HD; ++d) dsum += os[d] * oo[d];
#pragma omp simd
        for (int64_t d = 0; d < HD; ++d) {
          put(qd[d], qs[d]);
          put(od[d], os[d]);
        }
        d_row[gr] = dsum;
        lse_row[gr] = lse[L.lse_off(b, h, t)];
      }
#pragma omp parallel for schedule(static) collapse(2) if (par)
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t i0 = 0; i0 < M; i0 += 16) {  // M is a multiple of kKeyAlign
          const E* qs = w.qb.data() + (g * M + i0) * HD;
          const E* os = w.dob.data() + (g * M + i0) * HD;
          E* qt = w.qbt.data() + g * HD * M + i0;
          E* ot = w.dobt.data() + g * HD * M + i0;
          for (int64_t d = 0; d < HD; ++d)
#pragma omp simd
            for (int64_t i = 0; i < 16; ++i) {
              qt[d * M + i] = qs[i * HD + d];
              ot[d * M + i] = os[i * HD + d];
            }
        }
      for (int64_t c0 = ks; c0 < ke; c0 += geo.chunk) {
        const int64_t N = std::min(geo.chunk, ke - c0);
        fill_key_table(w, geo, b, t0, tv, c0, N, r0, r1);
        bool fused = false;
        if constexpr (std::is_same_v<E, uint16_t>) {
          if (fused_scores_apply(HD, M)) {  // P and dS straight from S and dP's 32 x 32 blocks, in L1
            ScoresEpilogue<E> ep{&w, lse_row, d_row, M, geo.chunk, g0, N, scale};
            fused_scores({nh, M, N, HD, HD, HD, M * HD, Tp * HD}, w.qb.data() + r0 * HD,
                         w.kg.data() + (g0 * Tp + c0) * HD, w.dob.data() + r0 * HD, w.vg.data() + (g0 * Tp + c0) * HD,
                         &ScoresEpilogue<E>::run, &ep);
            fused = true;
          }
        }
        if (!fused) {
          const MatmulKey by_keys{nh, M, N, HD, HD, HD, N, M * HD, Tp * HD, SC, true, false};
          matmul(Product::QK, by_keys, w.qb.data() + r0 * HD, w.kg.data() + (g0 * Tp + c0) * HD,
                 w.s.data() + g0 * SC);
          matmul(Product::dOV, by_keys, w.dob.data() + r0 * HD, w.vg.data() + (g0 * Tp + c0) * HD,
                 w.dp.data() + g0 * SC);
          // P = exp(scale S - lse) and dS = scale P (dP - D), masked, as operands
#pragma omp parallel for schedule(static) if (par)
          for (int64_t gr = r0; gr < r1; ++gr) {
            E* p = w.pb.data() + geo.chunk_row(gr, N);
            E* ds = w.dsb.data() + geo.chunk_row(gr, N);
            const int64_t j0 = w.key_j0[size_t(gr)], j1 = w.key_j1[size_t(gr)];
            if (j0 >= j1) {
              std::fill_n(p, N, E(0));
              std::fill_n(ds, N, E(0));
              continue;
            }
            scores_to_operands(w.s.data() + geo.chunk_row(gr, N), w.dp.data() + geo.chunk_row(gr, N), p, ds, N, j0, j1,
                               scale, lse_row[gr], d_row[gr]);
          }
        }
        matmul(Product::dSK, MatmulKey{nh, M, HD, N, N, HD, HD, SC, Tp * HD, M * HD, false, c0 > ks},
               w.dsb.data() + g0 * SC, w.kg.data() + (g0 * Tp + c0) * HD, w.o.data() + r0 * HD);
        const MatmulKey by_rows{nh, HD, N, M, M, N, Tp, HD * M, SC, HD * Tp, false, true};
        matmul(Product::dOP, by_rows, w.dobt.data() + g0 * HD * M, w.pb.data() + g0 * SC,
               w.dvt.data() + g0 * HD * Tp + c0);
        matmul(Product::QdS, by_rows, w.qbt.data() + g0 * HD * M, w.dsb.data() + g0 * SC,
               w.dkt.data() + g0 * HD * Tp + c0);
      }
#pragma omp parallel for schedule(static) if (par)
      for (int64_t it = r0; it < r1; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
        const int64_t gr = geo.mem_row(it);
        const int64_t g = gr / M, r = gr % M, t = t0 + r % R;
        if (t >= tend) continue;
        float* dst = dq + L.q_off(b, t, geo.head(g, r));
        if (t >= tv)
          std::fill_n(dst, HD, 0.0f);
        else
          std::copy_n(w.o.data() + gr * HD, HD, dst);
      }
    }
    // dK, dV rows of batch row b from their transposes (keys past the row's length are never seen: zero)
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = g0 * L.T; i < g1 * L.T; ++i) {
      const int64_t g = i / L.T, s = i % L.T;
      float* kd = dk + L.kv_off(b, s, g);
      float* vd = dv + L.kv_off(b, s, g);
      const float* kt = w.dkt.data() + g * HD * Tp + s;
      const float* vt = w.dvt.data() + g * HD * Tp + s;
      for (int64_t d = 0; d < HD; ++d) {
        kd[d] = kt[d * Tp];
        vd[d] = vt[d * Tp];
      }
    }
  }
}

template <typename E>
void attention_backward_impl(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const float* out, const float* lse, const AttentionShape& shape,
                             const int32_t* lengths, const int32_t* kv_begin) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_backward"));
  Buffers<E>& w = buffers<E>();
  w.size(geo, true);
  const int64_t H = geo.L.NKV;
  for (int64_t b = 0; b < geo.L.B; ++b) {
    if (heads_per_thread<E>(H)) {
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t g = 0; g < H; ++g)
        backward_heads(dq, dk, dv, dout, q, k, v, out, lse, geo, w, b, g, g + 1, false);
    } else {
      backward_heads(dq, dk, dv, dout, q, k, v, out, lse, geo, w, b, 0, H, true);
    }
  }
}

}  // namespace ZL_BLOCKED_NS
}  // namespace
}  // namespace zerolora::kernels
