// Attention of a few new tokens against a KV cache on the GPU (generation): kernels.h's attention_decode.
//
//   query i (absolute position p0 + i), head h, kv head g = h / (NH / NKV):
//   out_ih = sum_s softmax_s(scale q_ih . k_sg) v_sg  over first_i <= s <= p0 + i
//   (first_i = 0, or with a sliding window max(0, p0 + i - window + 1), as the CPU kernel)
//
// A block per (new token, query head), kDecodeWarps warps. Warp w walks the key tiles w, w + kDecodeWarps, ...
// of 32 keys each: lane j scores key tile*32 + j (a dot product over HD against q in shared memory), the warp
// takes the tile's maximum, rescales its running softmax state (max, sum, the output row) and adds p_s v_s with
// the lanes spread over the head dimension (lane owns d = lane + 32 e). The warps' states are merged in shared
// memory at the end. fp32 throughout with expf (the CPU kernel sums in double: tests/kernels/
// test_cuda_decode.cpp bounds the difference). Any HD up to 256 (odd ones included), any GQA ratio; no T x T
// or per-key buffer, no scratch, so decoding allocates nothing.
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeMaxHD = 256;
constexpr int kPerLane = kDecodeMaxHD / 32;

template <bool VEC4>
__device__ __forceinline__ float row_dot(const float* __restrict__ qs, const float* __restrict__ kr, int HD) {
  float dot = 0.f;
  if constexpr (VEC4) {
    const float4* k4 = reinterpret_cast<const float4*>(kr);
    const float4* q4 = reinterpret_cast<const float4*>(qs);
    for (int d = 0; d < HD / 4; ++d) {
      const float4 a = q4[d], b = __ldg(k4 + d);
      dot = fmaf(a.x, b.x, dot);
      dot = fmaf(a.y, b.y, dot);
      dot = fmaf(a.z, b.z, dot);
      dot = fmaf(a.w, b.w, dot);
    }
  } else {
    for (int d = 0; d < HD; ++d) dot = fmaf(qs[d], __ldg(kr + d), dot);
  }
  return dot;
}

template <bool VEC4>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(float* __restrict__ out, const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, int p0, int NH, int NKV, int HD, int group, int window,
                            float scale) {
  const int i = int(blockIdx.x) / NH, h = int(blockIdx.x) % NH, g = h / group;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int last = p0 + i;
  const int first = window > 0 ? max(0, last - window + 1) : 0;
  const int64_t KV = int64_t(NKV) * HD;
  __shared__ __align__(16) float qs[kDecodeMaxHD];
  __shared__ float warp_max[kDecodeWarps], warp_sum[kDecodeWarps];
  __shared__ float warp_acc[kDecodeWarps][kDecodeMaxHD];

  const float* qi = q + (int64_t(i) * NH + h) * HD;
  for (int d = int(threadIdx.x); d < HD; d += int(blockDim.x)) qs[d] = qi[d];
  __syncthreads();

  float m = -INFINITY, l = 0.f;
  float acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0.f;
  const float* kg = k + int64_t(g) * HD;
  const float* vg = v + int64_t(g) * HD;
  for (int t0 = first + warp * 32; t0 <= last; t0 += kDecodeWarps * 32) {
    const int s = t0 + lane;
    const bool valid = s <= last;
    const float score = valid ? row_dot<VEC4>(qs, kg + int64_t(s) * KV, HD) * scale : -INFINITY;
    float tile_max = score;
#pragma unroll
    for (int o = 16; o; o >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
    const float m_new = fmaxf(m, tile_max);  // finite: lane 0's key t0 <= last is in the tile
    const float corr = expf(m - m_new);      // 0 on the warp's first tile (m = -inf)
    const float p = valid ? expf(score - m_new) : 0.f;
    float tile_sum = p;
#pragma unroll
    for (int o = 16; o; o >>= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, o);
    l = l * corr + tile_sum;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[e] *= corr;
    const int count = min(32, last - t0 + 1);
    for (int j = 0; j < count; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      const float* vr = vg + int64_t(t0 + j) * KV;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) {
        const int d = lane + 32 * e;
        if (d < HD) acc[e] = fmaf(pj, __ldg(vr + d), acc[e]);
      }
    }
    m = m_new;
  }

  // merge the warps (a warp that saw no key has m = -inf, l = 0 and adds nothing)
  if (lane == 0) warp_max[warp] = m, warp_sum[warp] = l;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < HD) warp_acc[warp][d] = acc[e];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, warp_max[w]);
  float weight[kDecodeWarps], L = 0.f;
  for (int w = 0; w < kDecodeWarps; ++w) {
    weight[w] = warp_sum[w] > 0.f ? expf(warp_max[w] - M) : 0.f;
    L += warp_sum[w] * weight[w];
  }
  float* o = out + (int64_t(i) * NH + h) * HD;
  for (int d = int(threadIdx.x); d < HD; d += int(blockDim.x)) {
    float sum = 0.f;
    for (int w = 0; w < kDecodeWarps; ++w) sum = fmaf(warp_acc[w][d], weight[w], sum);
    o[d] = sum / L;
  }
}

}  // namespace

void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n, int64_t p0,
                      int64_t NH, int64_t NKV, int64_t HD, int64_t window, CudaState& s) {
  const char* op = "attention_decode (cuda)";
  core::check(n >= 0 && p0 >= 0, op, "negative token count or cache length");
  core::check(NH > 0 && NKV > 0 && NH % NKV == 0, op,
              "query heads " + std::to_string(NH) + " are not a multiple of key/value heads " + std::to_string(NKV));
  core::check(HD >= 1 && HD <= kDecodeMaxHD, op,
              "head size " + std::to_string(HD) + " is outside the GPU decoder's 1.." + std::to_string(kDecodeMaxHD),
              "run generation with --device cpu");
  core::check(window >= 0, op, "negative window " + std::to_string(window));
  core::check(p0 + n < INT_MAX && n * NH < INT_MAX, op, "the sequence is too long for the GPU decoder",
              "run generation with --device cpu");
  if (n == 0) return;
  core::check(out && q && k_cache && v_cache, op, "null buffer");
  ZL_CUDA_CHECK(cudaSetDevice(s.device));
  const float scale = float(1.0 / std::sqrt(double(HD)));
  // float4 loads of key rows: every row starts at a multiple of HD floats from a 256-byte aligned base
  const bool vec4 = HD % 4 == 0 && (reinterpret_cast<uintptr_t>(k_cache) % 16) == 0;
  const dim3 grid(unsigned(n * NH)), block(kDecodeWarps * 32);
  if (vec4)
    attention_decode_kernel<true><<<grid, block, 0, s.stream>>>(out, q, k_cache, v_cache, int(p0), int(NH), int(NKV),
                                                                int(HD), int(NH / NKV), int(window), scale);
  else
    attention_decode_kernel<false><<<grid, block, 0, s.stream>>>(out, q, k_cache, v_cache, int(p0), int(NH),
                                                                 int(NKV), int(HD), int(NH / NKV), int(window), scale);
  ZL_CUDA_LAUNCHED();
}

}  // namespace zerolora::kernels::cuda
