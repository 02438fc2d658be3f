// Causal grouped-query attention on the GPU, FlashAttention-2 style in fp32 (FMA on the CUDA cores, no
// tensor cores: the numerics are those of the CPU kernels up to the order of the sums). Same contract as
// kernels.h's attention_forward / attention_backward (see kernels/cpu/attention.cpp for the algebra):
//
//   score_ts = scale q_t.k_s for kv_begin[t] <= s <= t,  P = softmax_s(score),  out_t = sum_s P_ts v_s
//   lse_t = log sum_s exp(score_ts);  D_t = dout_t.out_t;  dP_ts = dout_t.v_s;  dS_ts = P_ts (dP_ts - D_t)
//   dq_t = scale sum_s dS_ts k_s,  dk_s = scale sum_t dS_ts q_t,  dv_s = sum_t P_ts dout_t
//
// Forward: a block per (query tile, head, batch row); the query tile sits in shared memory, key/value tiles
// stream through shared memory, each lane keeps RM query rows of the output in registers and an online
// softmax (max, sum) per row; the softmax statistics are reduced over the 8 lanes that share a row. Key
// tiles that no query row of the tile can see (causal, kv_begin) are never visited.
// Backward: a pre-pass computes D (0 on padded rows) into the Attention scratch and zeroes dq; then a block
// per (key tile, kv head, batch row) keeps the key and value tiles in shared memory and dk, dv in registers,
// walks the query tiles that can see it (from the diagonal down, skipping those kv_begin hides) for every
// query head of its group, recomputes P from lse, and adds dS K scale into dq with fp32 atomics (so dq's
// summation order, and its last bits, vary between runs; dk and dv are deterministic).
// The head size is padded (zeros) to a multiple of 32 in shared memory and registers; any HD <= 256 that
// is a multiple of 8 runs (compiled for padded sizes 32, 64, 96, 128, 192 and 256).
#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  int B, T, NH, NKV, HD, group;
  const int32_t* lengths;   // [B] or null
  const int32_t* kv_begin;  // [B*T] or null
  float scale;
};

__device__ __forceinline__ int64_t q_off(const Params& p, int b, int t, int h) {
  return ((int64_t(b) * p.T + t) * p.NH + h) * p.HD;
}
__device__ __forceinline__ int64_t kv_off(const Params& p, int b, int s, int g) {
  return ((int64_t(b) * p.T + s) * p.NKV + g) * p.HD;
}
// lengths and kv_begin live in device memory and are not validated on the host (that would need a
// synchronisation); clamped here so that a bad value gives wrong numbers, never an access out of bounds.
__device__ __forceinline__ int row_len(const Params& p, int b) {
  return p.lengths ? min(max(p.lengths[b], 0), p.T) : p.T;
}
__device__ __forceinline__ int row_lo(const Params& p, int b, int t) {
  return p.kv_begin ? max(p.kv_begin[int64_t(b) * p.T + t], 0) : 0;
}

__device__ __forceinline__ void fma4(float4& acc, float a, const float4& x) {
  acc.x = fmaf(a, x.x, acc.x);
  acc.y = fmaf(a, x.y, acc.y);
  acc.z = fmaf(a, x.z, acc.z);
  acc.w = fmaf(a, x.w, acc.w);
}
__device__ __forceinline__ float dot4(const float4& a, const float4& b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}
__device__ __forceinline__ float comp(const float4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}

// rows [0, ROWS) x HDP columns of shared memory (leading dimension LD) from the rows of a [*, stride]
// tensor starting at src (row r at src + r * stride); rows >= nvalid and columns >= HD are zero.
template <int ROWS, int HDP, int LD, int NT>
__device__ __forceinline__ void load_tile(float* dst, const float* src, int64_t stride, int nvalid, int HD) {
  constexpr int C4 = HDP / 4;
  for (int i = threadIdx.x; i < ROWS * C4; i += NT) {
    const int r = i / C4, c = (i % C4) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < nvalid && c < HD) x = __ldg(reinterpret_cast<const float4*>(src + r * stride + c));
    *reinterpret_cast<float4*>(dst + r * LD + c) = x;
  }
}

// ---- forward -----------------------------------------------------------------------------------------

constexpr int kFwdThreads = 128;  // 4 warps
constexpr int kFwdKeys = 32;      // keys per shared-memory tile

template <int HDP, int RM>
struct FwdCfg {
  static constexpr int BQ = 16 * RM;        // query rows per block: 4 warps x 4 row groups x RM
  static constexpr int BK = kFwdKeys;
  static constexpr int LD = HDP + 4;        // K/V/Q rows: 16-byte aligned, 8 consecutive rows on distinct banks
  static constexpr int LDP = BK + 8;        // P rows: the 32 lanes' stores land on distinct banks
  static constexpr int NC = HDP / 32;       // float4 output columns per lane
  static constexpr size_t smem = sizeof(float) * size_t(BQ * LD + 2 * BK * LD + BQ * LDP);
};

// Lane (w, rg = lane / 8, cg = lane % 8) owns query rows w*4*RM + rg + 4i (i < RM): the 8 lanes of a row
// group share rows (softmax reductions over xor 1, 2, 4); scores at keys cg + 8j; output columns
// cg*4 + 32jj .. +3.
template <int HDP, int RM>
__global__ void __launch_bounds__(kFwdThreads, 2)
    attention_fwd_kernel(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                         const float* __restrict__ k, const float* __restrict__ v, Params p) {
  using C = FwdCfg<HDP, RM>;
  constexpr int BQ = C::BQ, BK = C::BK, LD = C::LD, LDP = C::LDP, NC = C::NC, SC = BK / 8;
  extern __shared__ float4 smem4[];
  float* sQ = reinterpret_cast<float*>(smem4);
  float* sK = sQ + BQ * LD;
  float* sV = sK + BK * LD;
  float* sP = sV + BK * LD;
  __shared__ int s_lo[BQ];
  __shared__ int s_minlo;

  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);  // longest (last) query tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / p.group;
  const int t0 = qt * BQ, tend = min(t0 + BQ, p.T);
  const int tv = max(t0, min(row_len(p, b), tend));  // valid rows [t0, tv), padding [tv, tend)
  const int tid = threadIdx.x;

  // padded rows: out = 0, lse = 0
  for (int i = tid; i < (tend - tv) * p.HD; i += kFwdThreads) {
    const int t = tv + i / p.HD, d = i % p.HD;
    out[q_off(p, b, t, h) + d] = 0.f;
    if (d == 0) lse[(int64_t(b) * p.NH + h) * p.T + t] = 0.f;
  }
  if (tv <= t0) return;

  if (tid == 0) s_minlo = tv;
  __syncthreads();
  for (int i = tid; i < BQ; i += kFwdThreads) {
    const int t = t0 + i;
    const int lo = t < tv ? row_lo(p, b, t) : INT_MAX;  // padded rows see nothing
    s_lo[i] = lo;
    if (t < tv) atomicMin(&s_minlo, lo);
  }
  load_tile<BQ, HDP, LD, kFwdThreads>(sQ, q + q_off(p, b, t0, h), int64_t(p.NH) * p.HD, tv - t0, p.HD);
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32, rg = lane / 8, cg = lane % 8;
  int rows[RM], lo[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    rows[i] = warp * 4 * RM + rg + 4 * i;
    lo[i] = s_lo[rows[i]];
  }
  float m[RM], l[RM];
  float4 acc[RM][NC];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) acc[i][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  const float sl2 = p.scale * kLog2e;
  const int64_t kv_stride = int64_t(p.NKV) * p.HD;

  for (int kb = s_minlo / BK * BK; kb < tv; kb += BK) {
    __syncthreads();  // the previous tile's sK, sV, sP are read
    const int nk = min(BK, tv - kb);
    load_tile<BK, HDP, LD, kFwdThreads>(sK, k + kv_off(p, b, kb, g), kv_stride, nk, p.HD);
    load_tile<BK, HDP, LD, kFwdThreads>(sV, v + kv_off(p, b, kb, g), kv_stride, nk, p.HD);
    __syncthreads();

    float s[RM][SC];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < SC; ++j) s[i][j] = 0.f;
#pragma unroll 4
    for (int d = 0; d < HDP; d += 4) {
      float4 qa[RM], kb4[SC];
#pragma unroll
      for (int i = 0; i < RM; ++i) qa[i] = *reinterpret_cast<const float4*>(sQ + rows[i] * LD + d);
#pragma unroll
      for (int j = 0; j < SC; ++j) kb4[j] = *reinterpret_cast<const float4*>(sK + (cg + 8 * j) * LD + d);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < SC; ++j) s[i][j] = dot4(qa[i], kb4[j], s[i][j]);
    }

    // online softmax in the log2 domain, row by row
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int t = t0 + rows[i];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < SC; ++j) {
        const int key = kb + cg + 8 * j;
        const bool in = key >= lo[i] && key <= t;  // lo = INT_MAX on padded rows
        s[i][j] = in ? s[i][j] * sl2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      const float mnew = fmaxf(m[i], mx);
      const float muse = mnew == -INFINITY ? 0.f : mnew;  // nothing seen yet: every p is 0
      const float corr = exp2f(m[i] - muse);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < SC; ++j) {
        const float pj = exp2f(s[i][j] - muse);
        sum += pj;
        sP[rows[i] * LDP + cg + 8 * j] = pj;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      l[i] = l[i] * corr + sum;
      m[i] = mnew;
#pragma unroll
      for (int jj = 0; jj < NC; ++jj) {
        acc[i][jj].x *= corr;
        acc[i][jj].y *= corr;
        acc[i][jj].z *= corr;
        acc[i][jj].w *= corr;
      }
    }
    __syncwarp();  // a warp reads only the P rows it wrote

    // O += P V
#pragma unroll 2
    for (int c = 0; c < BK; c += 4) {
      float4 pa[RM];
#pragma unroll
      for (int i = 0; i < RM; ++i) pa[i] = *reinterpret_cast<const float4*>(sP + rows[i] * LDP + c);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
#pragma unroll
        for (int jj = 0; jj < NC; ++jj) {
          const float4 vv = *reinterpret_cast<const float4*>(sV + (c + e) * LD + cg * 4 + 32 * jj);
#pragma unroll
          for (int i = 0; i < RM; ++i) fma4(acc[i][jj], comp(pa[i], e), vv);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int t = t0 + rows[i];
    if (t >= tv) continue;
    const float inv = 1.f / l[i];
    float* o = out + q_off(p, b, t, h);
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) {
      const int c = cg * 4 + 32 * jj;
      if (c < p.HD) {
        float4 x = acc[i][jj];
        x.x *= inv;
        x.y *= inv;
        x.z *= inv;
        x.w *= inv;
        *reinterpret_cast<float4*>(o + c) = x;
      }
    }
    if (cg == 0) lse[(int64_t(b) * p.NH + h) * p.T + t] = (m[i] + log2f(l[i])) * kLn2;
  }
}

// ---- backward ----------------------------------------------------------------------------------------

constexpr int kBwdThreads = 256;  // 8 warps

// D[b,h,t] = dout . out on valid rows, 0 on padded ones; a warp per (b, t, h).
__global__ void attention_bwd_dot_kernel(float* __restrict__ D, const float* __restrict__ dout,
                                         const float* __restrict__ out, Params p) {
  const int64_t nrows = int64_t(p.B) * p.T * p.NH;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < nrows;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    const int h = int(r % p.NH), t = int((r / p.NH) % p.T), b = int(r / (int64_t(p.NH) * p.T));
    float sum = 0.f;
    if (t < row_len(p, b)) {
      const float* o = out + r * p.HD;
      const float* d = dout + r * p.HD;
      for (int i = lane; i < p.HD; i += 32) sum = fmaf(o[i], d[i], sum);
#pragma unroll
      for (int off = 16; off; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (lane == 0) D[(int64_t(b) * p.NH + h) * p.T + t] = sum;
  }
}

template <int HDP, int BB>
struct BwdCfg {
  static constexpr int LD = HDP + 4;  // Q, dO, K, V rows
  static constexpr int LDT = BB + 4;  // P^T, dS^T rows (keys), columns queries
  static constexpr int NC = HDP / 32;
  static constexpr size_t smem = sizeof(float) * size_t(4 * BB * LD + 2 * BB * LDT + 3 * BB);
};

// A block per (key tile of BB keys, kv head, batch row); query tiles of BB rows.
// Products S = Q K^T and dP = dO V^T: warps 4 (rows) x 2 (columns), lane (rg, cg) owns rows
// wr*4*SR + rg + 4i and keys wc*8*SC + cg + 8j. Products dV += P^T dO, dK += dS^T Q, dQ = dS K: lane owns
// RM consecutive rows w*4*RM + rg*RM + r (keys, or queries for dQ) and columns cg*4 + 32jj .. +3.
template <int HDP, int BB>
__global__ void __launch_bounds__(kBwdThreads, 1)
    attention_bwd_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                         const float* __restrict__ dout, const float* __restrict__ q, const float* __restrict__ k,
                         const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ Dv,
                         Params p) {
  using C = BwdCfg<HDP, BB>;
  constexpr int LD = C::LD, LDT = C::LDT, NC = C::NC;
  constexpr int SR = BB / 16, SC = BB / 16, RM = BB / 32;
  extern __shared__ float4 smem4[];
  float* sK = reinterpret_cast<float*>(smem4);
  float* sV = sK + BB * LD;
  float* sQ = sV + BB * LD;
  float* sdO = sQ + BB * LD;
  float* sPT = sdO + BB * LD;
  float* sdST = sPT + BB * LDT;
  float* s_lse = sdST + BB * LDT;  // log2 domain
  float* s_D = s_lse + BB;
  int* s_lo = reinterpret_cast<int*>(s_D + BB);

  const int ktile = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int s0 = ktile * BB, send = min(s0 + BB, p.T), len = row_len(p, b);
  const int s1 = max(s0, min(len, send));  // keys [s0, s1) can be seen; [s1, send) only by padded rows
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, rg = lane / 8, cg = lane % 8;
  const int64_t kv_stride = int64_t(p.NKV) * p.HD, q_stride = int64_t(p.NH) * p.HD;

  for (int i = tid; i < (send - s1) * p.HD; i += kBwdThreads) {
    const int64_t o = kv_off(p, b, s1 + i / p.HD, g) + i % p.HD;
    dk[o] = 0.f;
    dv[o] = 0.f;
  }
  if (s1 <= s0) return;

  load_tile<BB, HDP, LD, kBwdThreads>(sK, k + kv_off(p, b, s0, g), kv_stride, s1 - s0, p.HD);
  load_tile<BB, HDP, LD, kBwdThreads>(sV, v + kv_off(p, b, s0, g), kv_stride, s1 - s0, p.HD);

  const int wr = warp / 2, wc = warp % 2;
  int srow[SR], scol[SC];
#pragma unroll
  for (int i = 0; i < SR; ++i) srow[i] = wr * 4 * SR + rg + 4 * i;
#pragma unroll
  for (int j = 0; j < SC; ++j) scol[j] = wc * 8 * SC + cg + 8 * j;
  const int r0 = warp * 4 * RM + rg * RM;  // first of the lane's RM accumulator rows

  float4 adk[RM][NC], adv[RM][NC];
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) {
      adk[r][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
      adv[r][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  const float sl2 = p.scale * kLog2e;

  for (int qb = s0; qb < len; qb += BB) {  // BB-aligned query tiles from the diagonal one down
    const int nq = min(BB, len - qb);
    __syncthreads();  // the previous tile's shared memory is read
    bool any = false;
    for (int i = tid; i < BB; i += kBwdThreads) {
      const int lo = i < nq ? row_lo(p, b, qb + i) : INT_MAX;
      s_lo[i] = lo;
      any |= lo < s1;  // some valid query of this tile sees some key of the block's tile
    }
    if (!__syncthreads_or(any)) continue;
    int lo[SR];
#pragma unroll
    for (int i = 0; i < SR; ++i) lo[i] = s_lo[srow[i]];

    for (int h = g * p.group; h < (g + 1) * p.group; ++h) {
      if (h != g * p.group) __syncthreads();  // the previous head's shared memory is read
      load_tile<BB, HDP, LD, kBwdThreads>(sQ, q + q_off(p, b, qb, h), q_stride, nq, p.HD);
      load_tile<BB, HDP, LD, kBwdThreads>(sdO, dout + q_off(p, b, qb, h), q_stride, nq, p.HD);
      for (int i = tid; i < BB; i += kBwdThreads) {
        const int64_t o = (int64_t(b) * p.NH + h) * p.T + qb + i;
        s_lse[i] = i < nq ? lse[o] * kLog2e : 0.f;
        s_D[i] = i < nq ? Dv[o] : 0.f;
      }
      __syncthreads();

      // S = Q K^T, dP = dO V^T
      float s[SR][SC], dp[SR][SC];
#pragma unroll
      for (int i = 0; i < SR; ++i)
#pragma unroll
        for (int j = 0; j < SC; ++j) s[i][j] = dp[i][j] = 0.f;
#pragma unroll 2
      for (int d = 0; d < HDP; d += 4) {
        float4 qa[SR], oa[SR], kb4[SC], vb4[SC];
#pragma unroll
        for (int i = 0; i < SR; ++i) {
          qa[i] = *reinterpret_cast<const float4*>(sQ + srow[i] * LD + d);
          oa[i] = *reinterpret_cast<const float4*>(sdO + srow[i] * LD + d);
        }
#pragma unroll
        for (int j = 0; j < SC; ++j) {
          kb4[j] = *reinterpret_cast<const float4*>(sK + scol[j] * LD + d);
          vb4[j] = *reinterpret_cast<const float4*>(sV + scol[j] * LD + d);
        }
#pragma unroll
        for (int i = 0; i < SR; ++i)
#pragma unroll
          for (int j = 0; j < SC; ++j) {
            s[i][j] = dot4(qa[i], kb4[j], s[i][j]);
            dp[i][j] = dot4(oa[i], vb4[j], dp[i][j]);
          }
      }
      // P = exp(scale S - lse), dS = P (dP - D), 0 where masked; stored transposed
#pragma unroll
      for (int i = 0; i < SR; ++i) {
        const int t = qb + srow[i];
        const float l2 = s_lse[srow[i]], Dt = s_D[srow[i]];
#pragma unroll
        for (int j = 0; j < SC; ++j) {
          const int key = s0 + scol[j];
          const bool in = key >= lo[i] && key <= t && key < s1;  // lo = INT_MAX on padded rows
          const float pr = in ? exp2f(s[i][j] * sl2 - l2) : 0.f;
          sPT[scol[j] * LDT + srow[i]] = pr;
          sdST[scol[j] * LDT + srow[i]] = pr * (dp[i][j] - Dt);
        }
      }
      __syncthreads();

      // dV += P^T dO, dK += dS^T Q (rows: keys)
#pragma unroll 2
      for (int c = 0; c < BB; c += 4) {
        float4 pa[RM], da[RM];
#pragma unroll
        for (int r = 0; r < RM; ++r) {
          pa[r] = *reinterpret_cast<const float4*>(sPT + (r0 + r) * LDT + c);
          da[r] = *reinterpret_cast<const float4*>(sdST + (r0 + r) * LDT + c);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e)
#pragma unroll
          for (int jj = 0; jj < NC; ++jj) {
            const float4 oo = *reinterpret_cast<const float4*>(sdO + (c + e) * LD + cg * 4 + 32 * jj);
            const float4 qq = *reinterpret_cast<const float4*>(sQ + (c + e) * LD + cg * 4 + 32 * jj);
#pragma unroll
            for (int r = 0; r < RM; ++r) {
              fma4(adv[r][jj], comp(pa[r], e), oo);
              fma4(adk[r][jj], comp(da[r], e), qq);
            }
          }
      }

      // dq[rows] += scale dS K (rows: queries), atomically: other key tiles add to the same rows
      {
        float4 aq[RM][NC];
#pragma unroll
        for (int r = 0; r < RM; ++r)
#pragma unroll
          for (int jj = 0; jj < NC; ++jj) aq[r][jj] = make_float4(0.f, 0.f, 0.f, 0.f);
        const int nkeys = s1 - s0;
#pragma unroll 4
        for (int key = 0; key < nkeys; ++key) {
          float a[RM];
#pragma unroll
          for (int r = 0; r < RM; ++r) a[r] = sdST[key * LDT + r0 + r];
#pragma unroll
          for (int jj = 0; jj < NC; ++jj) {
            const float4 kk = *reinterpret_cast<const float4*>(sK + key * LD + cg * 4 + 32 * jj);
#pragma unroll
            for (int r = 0; r < RM; ++r) fma4(aq[r][jj], a[r], kk);
          }
        }
#pragma unroll
        for (int r = 0; r < RM; ++r) {
          if (r0 + r >= nq) continue;
          float* dst = dq + q_off(p, b, qb + r0 + r, h);
#pragma unroll
          for (int jj = 0; jj < NC; ++jj) {
            const int c = cg * 4 + 32 * jj;
            if (c >= p.HD) continue;
            const float4 x = aq[r][jj];
            atomicAdd(reinterpret_cast<float4*>(dst + c),
                      make_float4(x.x * p.scale, x.y * p.scale, x.z * p.scale, x.w * p.scale));
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int s = s0 + r0 + r;
    if (s >= s1) continue;
#pragma unroll
    for (int jj = 0; jj < NC; ++jj) {
      const int c = cg * 4 + 32 * jj;
      if (c >= p.HD) continue;
      const int64_t o = kv_off(p, b, s, g) + c;
      const float4 x = adk[r][jj];
      *reinterpret_cast<float4*>(dk + o) = make_float4(x.x * p.scale, x.y * p.scale, x.z * p.scale, x.w * p.scale);
      *reinterpret_cast<float4*>(dv + o) = adv[r][jj];
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------------

bool aligned16(const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; }

Params check_args(const AttentionShape& s, const int32_t* lengths, const int32_t* kv_begin, const char* fn,
                  std::initializer_list<const float*> ptrs) {
  core::check(s.B >= 0 && s.T >= 0 && s.NH > 0 && s.NKV > 0 && s.HD > 0, fn,
              "bad shape B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " NH=" + std::to_string(s.NH) +
                  " NKV=" + std::to_string(s.NKV) + " HD=" + std::to_string(s.HD));
  core::check(s.NH % s.NKV == 0, fn,
              std::to_string(s.NH) + " query heads are not a multiple of " + std::to_string(s.NKV) + " kv heads",
              "check num_attention_heads / num_key_value_heads in config.json");
  core::check(s.HD % 8 == 0 && s.HD <= 256, fn,
              "head size " + std::to_string(s.HD) + " is not supported on the GPU (a multiple of 8 up to 256)",
              "run with --device cpu");
  core::check(s.B <= 65535 && s.NH <= 65535 && s.T < (int64_t(1) << 30), fn,
              "shape too large for the GPU kernels: B=" + std::to_string(s.B) + " NH=" + std::to_string(s.NH) +
                  " T=" + std::to_string(s.T));
  for (const float* x : ptrs)
    core::check(aligned16(x), fn, "a tensor is not 16-byte aligned on the device");
  // lengths and kv_begin live in device memory and are not checked here (the CPU kernels check
  // 0 <= lengths[b] <= T and 0 <= kv_begin[b*T+t] <= t); the kernels clamp them (see row_len).
  return Params{int(s.B), int(s.T), int(s.NH), int(s.NKV), int(s.HD), int(s.NH / s.NKV), lengths, kv_begin,
                float(1.0 / std::sqrt(double(s.HD)))};
}

// The padded head size the kernels are compiled for.
int padded_hd(int HD) {
  const int p32 = (HD + 31) / 32 * 32;
  return p32 == 160 ? 192 : p32 == 224 ? 256 : p32;
}

template <int HDP>
void launch_forward(float* out, float* lse, const float* q, const float* k, const float* v, const Params& p,
                    CudaState& s) {
  constexpr int RM = HDP > 128 ? 2 : 4;
  using C = FwdCfg<HDP, RM>;
  auto kernel = attention_fwd_kernel<HDP, RM>;
  ZL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)));
  const dim3 grid(unsigned((p.T + C::BQ - 1) / C::BQ), unsigned(p.NH), unsigned(p.B));
  kernel<<<grid, kFwdThreads, C::smem, s.stream>>>(out, lse, q, k, v, p);
  ZL_CUDA_LAUNCHED();
}

template <int HDP>
void launch_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                     const float* v, const float* lse, const float* D, const Params& p, CudaState& s) {
  constexpr int BB = HDP > 128 ? 32 : 64;  // shared memory: 4 BB x (HDP + 4) floats
  using C = BwdCfg<HDP, BB>;
  auto kernel = attention_bwd_kernel<HDP, BB>;
  ZL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)));
  const dim3 grid(unsigned((p.T + BB - 1) / BB), unsigned(p.NKV), unsigned(p.B));
  kernel<<<grid, kBwdThreads, C::smem, s.stream>>>(dq, dk, dv, dout, q, k, v, lse, D, p);
  ZL_CUDA_LAUNCHED();
}

#define ZL_ATTENTION_HD_SWITCH(HD, CALL) \
  switch (padded_hd(HD)) {               \
    case 32: CALL(32); break;            \
    case 64: CALL(64); break;            \
    case 96: CALL(96); break;            \
    case 128: CALL(128); break;          \
    case 192: CALL(192); break;          \
    default: CALL(256); break;           \
  }

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin, CudaState& s) {
  const Params p = check_args(shape, lengths, kv_begin, "attention_forward (cuda)", {out, q, k, v});
  if (p.B == 0 || p.T == 0) return;
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
#define ZL_FWD(HDP) launch_forward<HDP>(out, lse, q, k, v, p, s)
  ZL_ATTENTION_HD_SWITCH(p.HD, ZL_FWD)
#undef ZL_FWD
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionShape& shape,
                        const int32_t* lengths, const int32_t* kv_begin, CudaState& s) {
  const Params p =
      check_args(shape, lengths, kv_begin, "attention_backward (cuda)", {dq, dk, dv, dout, q, k, v, out});
  if (p.B == 0 || p.T == 0) return;
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
  const int64_t nrows = int64_t(p.B) * p.NH * p.T;
  float* D = static_cast<float*>(scratch(s, Scratch::Attention, size_t(nrows) * sizeof(float)));
  ZL_CUDA_CHECK(cudaMemsetAsync(dq, 0, size_t(nrows) * p.HD * sizeof(float), s.stream));
  attention_bwd_dot_kernel<<<grid_for(nrows * 32, 256), 256, 0, s.stream>>>(D, dout, out, p);
  ZL_CUDA_LAUNCHED();
#define ZL_BWD(HDP) launch_backward<HDP>(dq, dk, dv, dout, q, k, v, lse, D, p, s)
  ZL_ATTENTION_HD_SWITCH(p.HD, ZL_BWD)
#undef ZL_BWD
}

}  // namespace zerolora::kernels::cuda
