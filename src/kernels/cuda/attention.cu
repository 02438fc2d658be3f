// Causal grouped-query attention on the GPU, FlashAttention-2 style in fp32 (FMA on the CUDA cores, no
// tensor cores: the numerics are those of the CPU kernels up to the order of the sums). Same contract as
// kernels.h's attention_forward / attention_backward (see kernels/cpu/attention.cpp for the algebra):
//
//   score_ts = scale q_t.k_s for lo_t <= s <= t,  P = softmax_s(score),  out_t = sum_s P_ts v_s
//   (lo_t = kv_begin[t], or with a sliding window max(kv_begin[t], t - window + 1): row_lo)
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
// With shape.bf16 and HD 64 or 128 the bf16 tensor-core kernels below run instead (mma.sync m16n8k16, bf16
// operands, fp32 accumulation and softmax: the numerics of the CPU's bf16 attention); other head sizes
// ignore shape.bf16 and run the fp32 kernels.
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"
#if ZEROLORA_WITH_CUDNN
#include "kernels/cuda/cudnn_attention.h"
#endif

namespace zerolora::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  int B, T, NH, NKV, HD, group;
  const int32_t* lengths;   // [B] or null
  const int32_t* kv_begin;  // [B*T] or null
  float scale;
  int window;  // AttentionShape::window: query t sees keys s > t - window (0: no window)
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
// The first key query t sees: its sample's start (packing) or the sliding window's, the later. Every kernel
// bounds its key ranges (and skips tiles) with this, so the window needs nothing else.
__device__ __forceinline__ int row_lo(const Params& p, int b, int t) {
  const int begin = p.kv_begin ? max(p.kv_begin[int64_t(b) * p.T + t], 0) : 0;
  return p.window > 0 ? max(begin, t - p.window + 1) : begin;
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

// ---- bf16 tensor-core path (shape.bf16, HD 64 and 128) -----------------------------------------------
//
// The same algorithm as the fp32 kernels above, with the five products (S = Q K^T, O += P V in the forward;
// S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ += dS K in the backward) on the tensor cores:
// warp-level mma.sync.m16n8k16 with bf16 operands and fp32 accumulators. q, k, v, dout are rounded to bf16
// when they are staged in shared memory, P and dS when they become mma operands; the softmax (max, exp, sum,
// lse), D = rowsum(dout * out), the masks and every accumulator stay fp32. That is the CPU's bf16 attention
// (kernels.h): the products take q, k, v, dout, P and dS rounded to bf16 and accumulate in fp32.
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"); lane = 4 gid + tig (gid = lane >> 2 in 0..7, tig = lane & 3):
//   A (16 x 16, row-major), 4 .b32 registers of 2 bf16 (the lower column in the low 16 bits):
//     a0 = A[gid    ][2 tig, 2 tig + 1]        a1 = A[gid + 8][2 tig, 2 tig + 1]
//     a2 = A[gid    ][2 tig + 8, 2 tig + 9]    a3 = A[gid + 8][2 tig + 8, 2 tig + 9]
//   B (16 x 8, "col": element (k, n)), 2 .b32 registers:
//     b0 = B[2 tig, 2 tig + 1][gid]            b1 = B[2 tig + 8, 2 tig + 9][gid]
//   C, D (16 x 8 fp32), 4 registers:
//     c0, c1 = C[gid][2 tig, 2 tig + 1]        c2, c3 = C[gid + 8][2 tig, 2 tig + 1]
// Every operand is staged in shared memory with its k dimension contiguous: an A operand (M x K) as
// [M][K], a B operand (K x N) as [N][K]. Then each register above is one aligned 32-bit shared load of two
// consecutive k (ld_a / ld_b). Row strides are k extent + 8 bf16: (extent/2 + 4) words, so the 8 gids of a
// load hit rows 4 words (or, for 40-element rows, 20 words) apart and the 32 lanes hit 32 distinct banks.
// A product's C fragments over two adjacent n-tiles (columns 16 kk .. 16 kk + 15) are, element for element,
// the A fragment of the next product whose k runs over those columns (c_to_a): a0 = C[2kk].c0,c1 (row gid,
// columns 2 tig, +1), a1 = C[2kk].c2,c3 (row gid + 8), a2 = C[2kk+1].c0,c1 (columns 8 + 2 tig, +1),
// a3 = C[2kk+1].c2,c3. So P (forward) and P^T, dS^T (backward) never leave the registers, except dS, which
// the dQ product needs transposed and goes through shared memory.

using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low 16 bits
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// d += a b (16 x 8 x 16)
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// The A fragment of rows m0 .. m0 + 15, k columns k0 .. k0 + 15 of a [M][ld] tile (see the layout above).
__device__ __forceinline__ void ld_a(uint32_t (&a)[4], const bf16* s, int ld, int m0, int k0, int gid, int tig) {
  const bf16* r0 = s + (m0 + gid) * ld + k0 + 2 * tig;
  const bf16* r1 = r0 + 8 * ld;
  a[0] = ld32(r0);
  a[1] = ld32(r1);
  a[2] = ld32(r0 + 8);
  a[3] = ld32(r1 + 8);
}
// The B fragment of n columns n0 .. n0 + 7, k rows k0 .. k0 + 15 of a [N][ld] tile (k contiguous).
__device__ __forceinline__ void ld_b(uint32_t (&b)[2], const bf16* s, int ld, int n0, int k0, int gid, int tig) {
  const bf16* r = s + (n0 + gid) * ld + k0 + 2 * tig;
  b[0] = ld32(r);
  b[1] = ld32(r + 8);
}
// The A fragment (k = columns 16 kk .. 16 kk + 15) from the C fragments of n-tiles 2 kk and 2 kk + 1.
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// rows [0, ROWS) x HD columns of a [*, stride] fp32 tensor starting at src, rounded to bf16, into dst[r][c]
// (leading dimension LD; skipped if LD == 0) and, if LDT > 0, transposed into dstT[c][r] (leading dimension LDT); rows >= nvalid
// are zero. Without the transposed copy consecutive threads take consecutive float4 of a row (coalesced
// reads); with it, consecutive rows (the transposed 2-byte stores of a warp then fill consecutive halves of
// 16 words instead of piling onto two banks).
template <int ROWS, int HD, int LD, int LDT, int NT>
__device__ __forceinline__ void load_bf16(bf16* dst, bf16* dstT, const float* src, int64_t stride, int nvalid) {
  for (int i = threadIdx.x; i < ROWS * (HD / 4); i += NT) {
    const int r = LDT > 0 ? i % ROWS : i / (HD / 4), c = LDT > 0 ? i / ROWS * 4 : i % (HD / 4) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < nvalid) x = __ldg(reinterpret_cast<const float4*>(src + r * stride + c));
    if constexpr (LD > 0)
      *reinterpret_cast<uint2*>(dst + r * LD + c) = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
    if constexpr (LDT > 0) {
      dstT[(c + 0) * LDT + r] = __float2bfloat16_rn(x.x);
      dstT[(c + 1) * LDT + r] = __float2bfloat16_rn(x.y);
      dstT[(c + 2) * LDT + r] = __float2bfloat16_rn(x.z);
      dstT[(c + 3) * LDT + r] = __float2bfloat16_rn(x.w);
    }
  }
}

constexpr int kTcThreads = 128;  // 4 warps

template <int HD>
struct TcFwdCfg {
  static constexpr int BQ = 64;        // query rows per block: 16 per warp
  static constexpr int BK = 64;        // keys per tile
  static constexpr int LD = HD + 8;    // sQ [BQ][LD], sK [BK][LD]
  static constexpr int LDV = BK + 8;   // sVt [HD][LDV] (V transposed: the B operand of P V, k = keys)
  static constexpr size_t smem = sizeof(bf16) * size_t(BQ * LD + BK * LD + HD * LDV);
};

// Warp w owns query rows w*16 .. w*16 + 15 of the tile; lane (gid, tig) holds rows w*16 + gid (C elements 0, 1)
// and w*16 + gid + 8 (elements 2, 3), keys / output columns n*8 + 2 tig + {0, 1} of every n-tile. The four
// lanes of a gid share rows: row max and sum reduce over xor 1, 2.
template <int HD>
__global__ void __launch_bounds__(kTcThreads)
    attention_fwd_bf16_kernel(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
                              const float* __restrict__ k, const float* __restrict__ v, Params p) {
  using C = TcFwdCfg<HD>;
  constexpr int BQ = C::BQ, BK = C::BK, LD = C::LD, LDV = C::LDV, KQ = HD / 16, NO = HD / 8, NS = BK / 8;
  extern __shared__ float4 smem4[];
  bf16* sQ = reinterpret_cast<bf16*>(smem4);
  bf16* sK = sQ + BQ * LD;
  bf16* sVt = sK + BK * LD;
  __shared__ int s_lo[BQ];
  __shared__ int s_minlo;

  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);  // longest (last) query tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / p.group;
  const int t0 = qt * BQ, tend = min(t0 + BQ, p.T);
  const int tv = max(t0, min(row_len(p, b), tend));  // valid rows [t0, tv), padding [tv, tend)
  const int tid = threadIdx.x;

  for (int i = tid; i < (tend - tv) * p.HD; i += kTcThreads) {  // padded rows: out = 0, lse = 0
    const int t = tv + i / p.HD, d = i % p.HD;
    out[q_off(p, b, t, h) + d] = 0.f;
    if (d == 0) lse[(int64_t(b) * p.NH + h) * p.T + t] = 0.f;
  }
  if (tv <= t0) return;

  if (tid == 0) s_minlo = tv;
  __syncthreads();
  for (int i = tid; i < BQ; i += kTcThreads) {
    const int t = t0 + i;
    const int lo = t < tv ? row_lo(p, b, t) : INT_MAX;  // padded rows see nothing
    s_lo[i] = lo;
    if (t < tv) atomicMin(&s_minlo, lo);
  }
  load_bf16<BQ, HD, LD, 0, kTcThreads>(sQ, nullptr, q + q_off(p, b, t0, h), int64_t(p.NH) * p.HD, tv - t0);
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32, gid = lane >> 2, tig = lane & 3;
  const int r0 = warp * 16 + gid, r1 = r0 + 8;  // the lane's two rows in the tile
  const int ta = t0 + r0, tb = t0 + r1;
  const int loa = s_lo[r0], lob = s_lo[r1];
  int wlo = min(loa, lob);  // the first key any row of the warp sees (INT_MAX: the warp has no valid row)
#pragma unroll
  for (int off = 16; off; off /= 2) wlo = min(wlo, __shfl_xor_sync(0xffffffffu, wlo, off));
  const int wlast = t0 + warp * 16 + 15;  // no row of the warp sees a key past it

  uint32_t qf[KQ][4];  // Q's A fragments (rows w*16.., k = head dims), kept for every key tile
#pragma unroll
  for (int kk = 0; kk < KQ; ++kk) ld_a(qf[kk], sQ, LD, warp * 16, kk * 16, gid, tig);

  float o[NO][4];
#pragma unroll
  for (int j = 0; j < NO; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;  // la, lb: this lane's partial row sums
  const float sl2 = p.scale * kLog2e;
  const int64_t kv_stride = int64_t(p.NKV) * p.HD;

  for (int kb = s_minlo / BK * BK; kb < tv; kb += BK) {
    __syncthreads();  // the previous tile's sK, sVt are read
    const int nk = min(BK, tv - kb);
    load_bf16<BK, HD, LD, 0, kTcThreads>(sK, nullptr, k + kv_off(p, b, kb, g), kv_stride, nk);
    load_bf16<BK, HD, 0, LDV, kTcThreads>(nullptr, sVt, v + kv_off(p, b, kb, g), kv_stride, nk);
    __syncthreads();
    if (kb > wlast || kb + BK <= wlo) continue;  // the warp sees no key of this tile (warp-uniform)

    // S = Q K^T (16 rows x 64 keys per warp)
    float s[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KQ; ++kk)
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        uint32_t bf[2];
        ld_b(bf, sK, LD, n * 8, kk * 16, gid, tig);
        mma_bf16(s[n], qf[kk], bf);
      }

    // online softmax in the log2 domain; element e of n-tile n: row e < 2 ? a : b, key kb + n*8 + 2 tig + (e & 1)
    float mxa = -INFINITY, mxb = -INFINITY;
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kb + n * 8 + 2 * tig + (e & 1);
        const bool in = e < 2 ? (key >= loa && key <= ta) : (key >= lob && key <= tb);  // lo = INT_MAX: padded
        s[n][e] = in ? s[n][e] * sl2 : -INFINITY;
        if (e < 2)
          mxa = fmaxf(mxa, s[n][e]);
        else
          mxb = fmaxf(mxb, s[n][e]);
      }
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 1));
    mxa = fmaxf(mxa, __shfl_xor_sync(0xffffffffu, mxa, 2));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 1));
    mxb = fmaxf(mxb, __shfl_xor_sync(0xffffffffu, mxb, 2));
    const float mna = fmaxf(ma, mxa), mnb = fmaxf(mb, mxb);
    const float ua = mna == -INFINITY ? 0.f : mna, ub = mnb == -INFINITY ? 0.f : mnb;  // nothing seen: p = 0
    const float ca = exp2f(ma - ua), cb = exp2f(mb - ub);
    ma = mna;
    mb = mnb;
    float suma = 0.f, sumb = 0.f;
#pragma unroll
    for (int n = 0; n < NS; ++n) {
      s[n][0] = exp2f(s[n][0] - ua);
      s[n][1] = exp2f(s[n][1] - ua);
      s[n][2] = exp2f(s[n][2] - ub);
      s[n][3] = exp2f(s[n][3] - ub);
      suma += s[n][0] + s[n][1];
      sumb += s[n][2] + s[n][3];
    }
    la = la * ca + suma;  // every lane of the row scales by the same (reduced) max: the partials stay summable
    lb = lb * cb + sumb;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      o[j][0] *= ca;
      o[j][1] *= ca;
      o[j][2] *= cb;
      o[j][3] *= cb;
    }

    // O += P V: A = P from the S fragments (k = keys), B = V^T rows (head dims) from sVt
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[4];
      c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int j = 0; j < NO; ++j) {
        uint32_t bf[2];
        ld_b(bf, sVt, LDV, j * 8, kk * 16, gid, tig);
        mma_bf16(o[j], pa, bf);
      }
    }
  }

  la += __shfl_xor_sync(0xffffffffu, la, 1);
  la += __shfl_xor_sync(0xffffffffu, la, 2);
  lb += __shfl_xor_sync(0xffffffffu, lb, 1);
  lb += __shfl_xor_sync(0xffffffffu, lb, 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = half ? tb : ta;
    if (t >= tv) continue;
    const float l = half ? lb : la, m = half ? mb : ma, inv = 1.f / l;
    float* dst = out + q_off(p, b, t, h) + 2 * tig;
#pragma unroll
    for (int j = 0; j < NO; ++j)
      *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
    if (tig == 0) lse[(int64_t(b) * p.NH + h) * p.T + t] = (m + log2f(l)) * kLn2;
  }
}

template <int HD>
struct TcBwdCfg {
  static constexpr int BK = 64;                 // keys per block: 16 per warp
  static constexpr int BQ = HD > 64 ? 32 : 64;  // queries per tile (registers: dK, dV are 2 x HD/2 floats a lane)
  static constexpr int LD = HD + 8;             // sK, sV [BK][LD]; sQ, sdO [BQ][LD]
  static constexpr int LDK = BK + 8;            // sKt [HD][LDK]; sdS [BQ][LDK]
  static constexpr int LDQ = BQ + 8;            // sQt, sdOt [HD][LDQ]
  static constexpr size_t smem =
      sizeof(bf16) * size_t(2 * BK * LD + HD * LDK + 2 * BQ * LD + 2 * HD * LDQ + BQ * LDK) + sizeof(float) * 3 * BQ;
};

// A block per (key tile of 64 keys, kv head, batch row), walking the query tiles that can see it (from the
// diagonal down, skipping those kv_begin hides) for every query head of the group. Warp w owns keys
// w*16 .. w*16 + 15: it computes S^T = K Q^T and dP^T = V dO^T (keys x queries, lane rows w*16 + gid (+8),
// queries n*8 + 2 tig + {0,1}), turns them into P^T and dS^T in place, and accumulates dV += P^T dO and
// dK += dS^T Q (keys x head dims) in registers (the C fragments of S^T become A fragments, k = queries).
// dS goes to shared memory as [query][key]; then dQ (queries x head dims) = dS K is split over the warps
// (16-query m-tiles x ranges of head-dim n-tiles) and added into dq with fp32 atomics.
template <int HD>
__global__ void __launch_bounds__(kTcThreads)
    attention_bwd_bf16_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                              const float* __restrict__ dout, const float* __restrict__ q,
                              const float* __restrict__ k, const float* __restrict__ v,
                              const float* __restrict__ lse, const float* __restrict__ Dv, Params p) {
  using C = TcBwdCfg<HD>;
  constexpr int BK = C::BK, BQ = C::BQ, LD = C::LD, LDK = C::LDK, LDQ = C::LDQ;
  constexpr int KD = HD / 16, NO = HD / 8, NQ = BQ / 8;
  constexpr int MT = BQ / 16, NJ = NO / (4 / MT);  // dQ: m-tiles, head-dim n-tiles per warp
  extern __shared__ float4 smem4[];
  bf16* sK = reinterpret_cast<bf16*>(smem4);
  bf16* sV = sK + BK * LD;
  bf16* sKt = sV + BK * LD;
  bf16* sQ = sKt + HD * LDK;
  bf16* sdO = sQ + BQ * LD;
  bf16* sQt = sdO + BQ * LD;
  bf16* sdOt = sQt + HD * LDQ;
  bf16* sdS = sdOt + HD * LDQ;
  float* s_lse = reinterpret_cast<float*>(sdS + BQ * LDK);  // log2 domain
  float* s_D = s_lse + BQ;
  int* s_lo = reinterpret_cast<int*>(s_D + BQ);

  const int ktile = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int s0 = ktile * BK, send = min(s0 + BK, p.T), len = row_len(p, b);
  const int s1 = max(s0, min(len, send));  // keys [s0, s1) can be seen; [s1, send) only by padded rows
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane >> 2, tig = lane & 3;
  const int64_t kv_stride = int64_t(p.NKV) * p.HD, q_stride = int64_t(p.NH) * p.HD;

  for (int i = tid; i < (send - s1) * p.HD; i += kTcThreads) {
    const int64_t o = kv_off(p, b, s1 + i / p.HD, g) + i % p.HD;
    dk[o] = 0.f;
    dv[o] = 0.f;
  }
  if (s1 <= s0) return;

  load_bf16<BK, HD, LD, LDK, kTcThreads>(sK, sKt, k + kv_off(p, b, s0, g), kv_stride, s1 - s0);
  load_bf16<BK, HD, LD, 0, kTcThreads>(sV, nullptr, v + kv_off(p, b, s0, g), kv_stride, s1 - s0);

  const int ka = warp * 16 + gid, kb2 = ka + 8;  // the lane's two keys in the tile (C rows gid, gid + 8)
  const int keya = s0 + ka, keyb = s0 + kb2;
  const int mt = warp % MT, j0 = warp / MT * NJ;  // the warp's share of dQ

  float adk[NO][4], adv[NO][4];
#pragma unroll
  for (int j = 0; j < NO; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) adk[j][e] = adv[j][e] = 0.f;
  const float sl2 = p.scale * kLog2e;

  for (int qb = s0; qb < len; qb += BQ) {  // BQ-aligned query tiles (BK is a multiple of BQ) from the diagonal
    const int nq = min(BQ, len - qb);
    __syncthreads();  // the previous tile's shared memory is read
    bool any = false;
    for (int i = tid; i < BQ; i += kTcThreads) {
      const int lo = i < nq ? row_lo(p, b, qb + i) : INT_MAX;
      s_lo[i] = lo;
      any |= lo < s1;  // some valid query of this tile sees some key of the block's tile
    }
    if (!__syncthreads_or(any)) continue;

    for (int h = g * p.group; h < (g + 1) * p.group; ++h) {
      if (h != g * p.group) __syncthreads();  // the previous head's shared memory is read
      load_bf16<BQ, HD, LD, LDQ, kTcThreads>(sQ, sQt, q + q_off(p, b, qb, h), q_stride, nq);
      load_bf16<BQ, HD, LD, LDQ, kTcThreads>(sdO, sdOt, dout + q_off(p, b, qb, h), q_stride, nq);
      for (int i = tid; i < BQ; i += kTcThreads) {
        const int64_t o = (int64_t(b) * p.NH + h) * p.T + qb + i;
        s_lse[i] = i < nq ? lse[o] * kLog2e : 0.f;
        s_D[i] = i < nq ? Dv[o] : 0.f;
      }
      __syncthreads();

      // S^T = K Q^T, dP^T = V dO^T (16 keys x BQ queries per warp)
      float st[NQ][4], dpt[NQ][4];
#pragma unroll
      for (int n = 0; n < NQ; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        uint32_t ak[4], av[4];
        ld_a(ak, sK, LD, warp * 16, kk * 16, gid, tig);
        ld_a(av, sV, LD, warp * 16, kk * 16, gid, tig);
#pragma unroll
        for (int n = 0; n < NQ; ++n) {
          uint32_t bq[2], bo[2];
          ld_b(bq, sQ, LD, n * 8, kk * 16, gid, tig);
          ld_b(bo, sdO, LD, n * 8, kk * 16, gid, tig);
          mma_bf16(st[n], ak, bq);
          mma_bf16(dpt[n], av, bo);
        }
      }
      // P^T = exp(scale S - lse), dS^T = P^T (dP^T - D), 0 where masked; element e of n-tile n: key
      // e < 2 ? a : b, query n*8 + 2 tig + (e & 1). dS also to sdS[query][key] for the dQ product.
#pragma unroll
      for (int n = 0; n < NQ; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = n * 8 + 2 * tig + (e & 1), t = qb + qi;
          const int key = e < 2 ? keya : keyb;
          const bool in = key >= s_lo[qi] && key <= t && key < s1;  // lo = INT_MAX on padded rows
          const float pr = in ? exp2f(st[n][e] * sl2 - s_lse[qi]) : 0.f;
          const float ds = pr * (dpt[n][e] - s_D[qi]);
          st[n][e] = pr;
          dpt[n][e] = ds;
          sdS[qi * LDK + (e < 2 ? ka : kb2)] = __float2bfloat16_rn(ds);
        }
      // dV += P^T dO, dK += dS^T Q: A from the registers (k = queries), B = dO^T, Q^T rows (head dims)
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        uint32_t pa[4], da[4];
        c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
        c_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int j = 0; j < NO; ++j) {
          uint32_t bo[2], bq[2];
          ld_b(bo, sdOt, LDQ, j * 8, kk * 16, gid, tig);
          ld_b(bq, sQt, LDQ, j * 8, kk * 16, gid, tig);
          mma_bf16(adv[j], pa, bo);
          mma_bf16(adk[j], da, bq);
        }
      }
      __syncthreads();  // sdS is complete

      // dq[queries] += scale dS K: A = dS rows mt*16.. (k = keys), B = K^T rows (head dims) from sKt
      {
        float aq[NJ][4];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) aq[jj][0] = aq[jj][1] = aq[jj][2] = aq[jj][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          uint32_t a[4];
          ld_a(a, sdS, LDK, mt * 16, kk * 16, gid, tig);
#pragma unroll
          for (int jj = 0; jj < NJ; ++jj) {
            uint32_t bk[2];
            ld_b(bk, sKt, LDK, (j0 + jj) * 8, kk * 16, gid, tig);
            mma_bf16(aq[jj], a, bk);
          }
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int qi = mt * 16 + gid + 8 * half;
          if (qi >= nq) continue;
          float* dst = dq + q_off(p, b, qb + qi, h) + 2 * tig;
#pragma unroll
          for (int jj = 0; jj < NJ; ++jj)
            atomicAdd(reinterpret_cast<float2*>(dst + (j0 + jj) * 8),
                      make_float2(aq[jj][2 * half] * p.scale, aq[jj][2 * half + 1] * p.scale));
        }
      }
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int s = half ? keyb : keya;
    if (s >= s1) continue;
    const int64_t o = kv_off(p, b, s, g) + 2 * tig;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      *reinterpret_cast<float2*>(dk + o + j * 8) =
          make_float2(adk[j][2 * half] * p.scale, adk[j][2 * half + 1] * p.scale);
      *reinterpret_cast<float2*>(dv + o + j * 8) = make_float2(adv[j][2 * half], adv[j][2 * half + 1]);
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
  core::check(s.window >= 0, fn, "negative sliding window " + std::to_string(s.window));
  return Params{int(s.B), int(s.T), int(s.NH), int(s.NKV), int(s.HD), int(s.NH / s.NKV), lengths, kv_begin,
                float(1.0 / std::sqrt(double(s.HD))), int(std::min<int64_t>(s.window, INT_MAX))};
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

// The bf16 tensor-core kernels (shape.bf16): head sizes 64 and 128; others run the fp32 kernels.
bool tensor_core_path(const AttentionShape& shape) { return shape.bf16 && (shape.HD == 64 || shape.HD == 128); }

template <int HD>
void launch_forward_bf16(float* out, float* lse, const float* q, const float* k, const float* v, const Params& p,
                         CudaState& s) {
  using C = TcFwdCfg<HD>;
  auto kernel = attention_fwd_bf16_kernel<HD>;
  ZL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)));
  const dim3 grid(unsigned((p.T + C::BQ - 1) / C::BQ), unsigned(p.NH), unsigned(p.B));
  kernel<<<grid, kTcThreads, C::smem, s.stream>>>(out, lse, q, k, v, p);
  ZL_CUDA_LAUNCHED();
}

template <int HD>
void launch_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* lse, const float* D, const Params& p, CudaState& s) {
  using C = TcBwdCfg<HD>;
  auto kernel = attention_bwd_bf16_kernel<HD>;
  ZL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)));
  const dim3 grid(unsigned((p.T + C::BK - 1) / C::BK), unsigned(p.NKV), unsigned(p.B));
  kernel<<<grid, kTcThreads, C::smem, s.stream>>>(dq, dk, dv, dout, q, k, v, lse, D, p);
  ZL_CUDA_LAUNCHED();
}

// ---- cuDNN's fused attention for shape.bf16 (kernels/cuda/cudnn_attention.cpp) --------------------------
// The same problems as the tensor-core kernels above (bf16 products, fp32 softmax and accumulation; head sizes 64
// and 128, so shape.bf16 means the same arithmetic whichever runs) without packing, which cuDNN's masks cannot
// express. The fp32 activations are rounded to bf16 copies (as the tensor-core kernels round them when they load
// them), cuDNN's bf16 results widened back; rows past a sequence's length are zeroed, as the kernels above leave them.
#if ZEROLORA_WITH_CUDNN

// x viewed as [B][H][T][W]: entries of rows t >= lengths[b] (clamped to [0, T]) set to 0
__global__ void zero_padded_rows_kernel(float* __restrict__ x, const int32_t* __restrict__ lengths, int64_t B,
                                        int64_t H, int64_t T, int64_t W) {
  const int64_t n = B * H * T * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / W % T, b = i / (W * T * H);
    const int64_t len = min(max(int64_t(lengths[b]), int64_t(0)), T);
    if (t >= len) x[i] = 0.f;
  }
}

bool cudnn_path(const AttentionShape& shape, const int32_t* kv_begin) {
  return tensor_core_path(shape) && kv_begin == nullptr && cudnn_attention_enabled();
}

SdpaShape sdpa_shape(const Params& p) {
  return SdpaShape{p.B, p.T, p.NH, p.NKV, p.HD, p.window, p.scale};
}

void zero_padded_rows(float* x, const int32_t* lengths, const Params& p, int64_t H, int64_t W, CudaState& s) {
  if (!lengths) return;
  zero_padded_rows_kernel<<<grid_for(p.B * H * p.T * W), 256, 0, s.stream>>>(x, lengths, p.B, H, p.T, W);
  ZL_CUDA_LAUNCHED();
}

// false: cuDNN refused the shape and nothing was written (the caller runs its kernels)
bool cudnn_forward(float* out, float* lse, const float* q, const float* k, const float* v, const Params& p,
                   const int32_t* lengths, CudaState& s) {
  const int64_t nq = int64_t(p.B) * p.T * p.NH * p.HD, nkv = int64_t(p.B) * p.T * p.NKV * p.HD;
  auto* qb = static_cast<__nv_bfloat16*>(scratch(s, Scratch::AttentionBf16, size_t(2 * nq + 2 * nkv) * 2));
  __nv_bfloat16 *kb = qb + nq, *vb = kb + nkv, *ob = vb + nkv;
  round_to_bf16(qb, q, nq, s);
  round_to_bf16(kb, k, nkv, s);
  round_to_bf16(vb, v, nkv, s);
  if (!cudnn_attention_forward(ob, lse, qb, kb, vb, lengths, sdpa_shape(p), s)) return false;
  widen_bf16(out, ob, nq, s);
  zero_padded_rows(out, lengths, p, 1, int64_t(p.NH) * p.HD, s);
  zero_padded_rows(lse, lengths, p, p.NH, 1, s);
  return true;
}

bool cudnn_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                    const float* v, const float* out, const float* lse, const Params& p, const int32_t* lengths,
                    CudaState& s) {
  const int64_t nq = int64_t(p.B) * p.T * p.NH * p.HD, nkv = int64_t(p.B) * p.T * p.NKV * p.HD;
  auto* qb = static_cast<__nv_bfloat16*>(scratch(s, Scratch::AttentionBf16, size_t(4 * nq + 4 * nkv) * 2));
  __nv_bfloat16 *kb = qb + nq, *vb = kb + nkv, *ob = vb + nkv, *gb = ob + nq, *dqb = gb + nq, *dkb = dqb + nq,
                *dvb = dkb + nkv;
  round_to_bf16(qb, q, nq, s);
  round_to_bf16(kb, k, nkv, s);
  round_to_bf16(vb, v, nkv, s);
  round_to_bf16(ob, out, nq, s);
  round_to_bf16(gb, dout, nq, s);
  if (!cudnn_attention_backward(dqb, dkb, dvb, qb, kb, vb, ob, gb, lse, lengths, sdpa_shape(p), s)) return false;
  widen_bf16(dq, dqb, nq, s);
  widen_bf16(dk, dkb, nkv, s);
  widen_bf16(dv, dvb, nkv, s);
  zero_padded_rows(dq, lengths, p, 1, int64_t(p.NH) * p.HD, s);
  zero_padded_rows(dk, lengths, p, 1, int64_t(p.NKV) * p.HD, s);
  zero_padded_rows(dv, lengths, p, 1, int64_t(p.NKV) * p.HD, s);
  return true;
}
#endif

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
#if ZEROLORA_WITH_CUDNN
  if (cudnn_path(shape, kv_begin) && cudnn_forward(out, lse, q, k, v, p, lengths, s)) return;
#endif
  if (tensor_core_path(shape)) {
    if (p.HD == 64)
      launch_forward_bf16<64>(out, lse, q, k, v, p, s);
    else
      launch_forward_bf16<128>(out, lse, q, k, v, p, s);
    return;
  }
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
#if ZEROLORA_WITH_CUDNN
  if (cudnn_path(shape, kv_begin) && cudnn_backward(dq, dk, dv, dout, q, k, v, out, lse, p, lengths, s)) return;
#endif
  const int64_t nrows = int64_t(p.B) * p.NH * p.T;
  float* D = static_cast<float*>(scratch(s, Scratch::Attention, size_t(nrows) * sizeof(float)));
  ZL_CUDA_CHECK(cudaMemsetAsync(dq, 0, size_t(nrows) * p.HD * sizeof(float), s.stream));
  attention_bwd_dot_kernel<<<grid_for(nrows * 32, 256), 256, 0, s.stream>>>(D, dout, out, p);
  ZL_CUDA_LAUNCHED();
  if (tensor_core_path(shape)) {
    if (p.HD == 64)
      launch_backward_bf16<64>(dq, dk, dv, dout, q, k, v, lse, D, p, s);
    else
      launch_backward_bf16<128>(dq, dk, dv, dout, q, k, v, lse, D, p, s);
    return;
  }
#define ZL_BWD(HDP) launch_backward<HDP>(dq, dk, dv, dout, q, k, v, lse, D, p, s)
  ZL_ATTENTION_HD_SWITCH(p.HD, ZL_BWD)
#undef ZL_BWD
}

std::string attention_library() {
#if ZEROLORA_WITH_CUDNN
  if (!cudnn_attention_enabled())
    return "zerolora's kernels (cuDNN fused attention switched off by ZEROLORA_CUDNN_SDPA=0)";
  return "cuDNN fused attention (" + cudnn_attention_version() + ") where it covers the case, else zerolora's kernels";
#else
  return "zerolora's kernels (built without the cuDNN frontend: scripts/fetch-cudnn-frontend.sh)";
#endif
}

int64_t cudnn_attention_runs() {
#if ZEROLORA_WITH_CUDNN
  return cudnn_attention_executions();
#else
  return 0;
#endif
}

}  // namespace zerolora::kernels::cuda
