// The packing and softmax passes of the blocked attention kernels, included by attention_blocked.cpp once
// per instruction set (no include guard on purpose): ZL_BLOCKED_NS names the copy. Everything else (the
// products, geometry, scratch) is shared and defined before the includes. See attention_blocked.cpp.
namespace zerolora::kernels {
namespace {
namespace ZL_BLOCKED_NS {

// kg/vg <- k/v of batch row b, rows past T zero
template <typename E>
void pack_kv(Buffers<E>& w, const float* k, const float* v, const Geometry& geo, int64_t b) {
  const auto& L = geo.L;
  const int64_t HD = L.HD;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < L.NKV * geo.Tp; ++i) {
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

template <typename E>
void attention_forward_impl(float* out, float* lse, const float* q, const float* k, const float* v,
                            const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_forward"));
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R, H = L.NKV, Tp = geo.Tp, rows = H * M;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  Buffers<E>& w = buffers<E>();
  w.size(geo, false);
  float *m = w.row_a.data(), *l = w.row_b.data();  // running max and sum of the online softmax, per row
  for (int64_t b = 0; b < L.B; ++b) {
    pack_kv(w, k, v, geo, b);
    for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
      const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
      int64_t ks = 0, ke = 0;
      if (tv > t0) geo.key_range(b, t0, tv, &ks, &ke);
      // Q rows (zero past the valid ones); O = 0, m = -inf, l = 0
#pragma omp parallel for schedule(static)
      for (int64_t it = 0; it < rows; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
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
        matmul(Product::QK, MatmulKey{H, M, N, HD, HD, HD, N, M * HD, Tp * HD, M * N, true, false}, w.qb.data(),
               w.kg.data() + c0 * HD, w.s.data());
        // online softmax over this chunk: unnormalised P as an operand, O rescaled
#pragma omp parallel for schedule(static)
        for (int64_t gr = 0; gr < rows; ++gr) {
          const int64_t t = t0 + gr % M % R;
          E* p = w.pb.data() + gr * N;
          const int64_t j0 = t < tv ? L.lo(b, t) - c0 : 0, j1 = t < tv ? std::min(t + 1 - c0, N) : 0;
          if (j0 >= j1) {  // padding, or no key of this chunk visible
            std::fill_n(p, N, E(0));
            continue;
          }
          const float* srow = w.s.data() + gr * N;
          float mx = kNegInf;
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < N; ++j) mx = std::max(mx, cpu::select(j >= j0 && j < j1, srow[j] * scale, kNegInf));
          const float mnew = std::max(m[gr], mx), corr = cpu::exp_fast(m[gr] - mnew);
          float sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < N; ++j) {
            const float e = cpu::select(j >= j0 && j < j1, cpu::exp_fast(srow[j] * scale - mnew), 0.0f);
            put(p[j], e);
            sum += e;
          }
          l[gr] = l[gr] * corr + sum;
          m[gr] = mnew;
          if (corr != 1.0f) {
            float* o = w.o.data() + gr * HD;
#pragma omp simd
            for (int64_t d = 0; d < HD; ++d) o[d] *= corr;
          }
        }
        matmul(Product::PV, MatmulKey{H, M, HD, N, N, HD, HD, M * N, Tp * HD, M * HD, false, true}, w.pb.data(),
               w.vg.data() + c0 * HD, w.o.data());
      }
#pragma omp parallel for schedule(static)
      for (int64_t it = 0; it < rows; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
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
void attention_backward_impl(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const float* out, const float* lse, const AttentionShape& shape,
                             const int32_t* lengths, const int32_t* kv_begin) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Geometry geo(check_attention_args(shape, lengths, kv_begin, "attention_backward"));
  const auto& L = geo.L;
  const int64_t HD = L.HD, M = geo.M, R = geo.R, H = L.NKV, Tp = geo.Tp, rows = H * M;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  Buffers<E>& w = buffers<E>();
  w.size(geo, true);
  float *lse_row = w.row_a.data(), *d_row = w.row_b.data();
  for (int64_t b = 0; b < L.B; ++b) {
    pack_kv(w, k, v, geo, b);
    std::fill(w.dkt.begin(), w.dkt.end(), 0.0f);
    std::fill(w.dvt.begin(), w.dvt.end(), 0.0f);
    for (int64_t blk = 0; blk < geo.nblocks; ++blk) {
      const int64_t t0 = blk * R, tend = std::min(t0 + R, L.T), tv = std::clamp(L.len(b), t0, tend);
      if (tv <= t0) {  // padding only: dq rows are zero
        for (int64_t t = t0; t < tend; ++t) std::fill_n(dq + L.q_off(b, t, 0), L.NH * HD, 0.0f);
        continue;
      }
      int64_t ks, ke;
      geo.key_range(b, t0, tv, &ks, &ke);
      // Q, dO rows; D = dO.O and lse per row; then their transposes, 16 x 16 blocks at a time
#pragma omp parallel for schedule(static)
      for (int64_t it = 0; it < rows; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
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
#pragma omp parallel for schedule(static) collapse(2)
      for (int64_t g = 0; g < H; ++g)
        for (int64_t r0 = 0; r0 < M; r0 += 16) {  // M is a multiple of kKeyAlign
          const E* qs = w.qb.data() + (g * M + r0) * HD;
          const E* os = w.dob.data() + (g * M + r0) * HD;
          E* qt = w.qbt.data() + g * HD * M + r0;
          E* ot = w.dobt.data() + g * HD * M + r0;
          for (int64_t d = 0; d < HD; ++d)
#pragma omp simd
            for (int64_t i = 0; i < 16; ++i) {
              qt[d * M + i] = qs[i * HD + d];
              ot[d * M + i] = os[i * HD + d];
            }
        }
      for (int64_t c0 = ks; c0 < ke; c0 += geo.chunk) {
        const int64_t N = std::min(geo.chunk, ke - c0);
        const MatmulKey by_keys{H, M, N, HD, HD, HD, N, M * HD, Tp * HD, M * N, true, false};
        matmul(Product::QK, by_keys, w.qb.data(), w.kg.data() + c0 * HD, w.s.data());
        matmul(Product::dOV, by_keys, w.dob.data(), w.vg.data() + c0 * HD, w.dp.data());
        // P = exp(scale S - lse) and dS = scale P (dP - D), masked, as operands
#pragma omp parallel for schedule(static)
        for (int64_t gr = 0; gr < rows; ++gr) {
          const int64_t t = t0 + gr % M % R;
          E* p = w.pb.data() + gr * N;
          E* ds = w.dsb.data() + gr * N;
          const int64_t j0 = t < tv ? L.lo(b, t) - c0 : 0, j1 = t < tv ? std::min(t + 1 - c0, N) : 0;
          if (j0 >= j1) {
            std::fill_n(p, N, E(0));
            std::fill_n(ds, N, E(0));
            continue;
          }
          const float* srow = w.s.data() + gr * N;
          const float* dprow = w.dp.data() + gr * N;
          const float lr = lse_row[gr], D = d_row[gr];
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) {
            const float pj = cpu::select(j >= j0 && j < j1, cpu::exp_fast(srow[j] * scale - lr), 0.0f);
            put(p[j], pj);
            put(ds[j], scale * pj * (dprow[j] - D));
          }
        }
        matmul(Product::dSK, MatmulKey{H, M, HD, N, N, HD, HD, M * N, Tp * HD, M * HD, false, c0 > ks}, w.dsb.data(),
               w.kg.data() + c0 * HD, w.o.data());
        const MatmulKey by_rows{H, HD, N, M, M, N, Tp, HD * M, M * N, HD * Tp, false, true};
        matmul(Product::dOP, by_rows, w.dobt.data(), w.pb.data(), w.dvt.data() + c0);
        matmul(Product::QdS, by_rows, w.qbt.data(), w.dsb.data(), w.dkt.data() + c0);
      }
#pragma omp parallel for schedule(static)
      for (int64_t it = 0; it < rows; ++it) {  // in q's memory order (rows of a position: 8 KiB apart)
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
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < H * L.T; ++i) {
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

}  // namespace ZL_BLOCKED_NS
}  // namespace
}  // namespace zerolora::kernels
