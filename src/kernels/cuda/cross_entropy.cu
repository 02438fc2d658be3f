// Fused cross-entropy over a chunk of rows, in place (kernels/cpu/cross_entropy.cpp), one block per row:
//   mx = max(x), sum = sum exp(x - mx) (fp32 exps summed in double), loss = log(sum) + mx - x[target],
//   grad = grad_scale * (exp(x - mx) / sum - onehot(target)), formed as the CPU forms it: e * f with
//   f = float(grad_scale / sum), then x[target] -= float(grad_scale).
// The exps are recomputed in the gradient pass instead of being stored (one read-write of the row fewer).
// Differences from the CPU: expf (within 2 ulp) instead of the CPU's Cephes exp, the summation order of the
// double sums, and the chunk's loss and count added into sums[] with one atomic per row (so the order of the
// row losses in the double total varies from run to run: rounding of the double only).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 512;

// Reductions over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename T, typename Op>
__device__ inline T block_reduce(T v, T identity, Op op, T* shared /* [32] */) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

struct Max {
  __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};
struct Sum {
  __device__ double operator()(double a, double b) const { return a + b; }
};

// Row loop over j in [0, V): float4 when the row is 16-byte aligned and V a multiple of 4, else scalar.
template <typename F>
__device__ inline void for_row(float* x, int64_t V, bool vec4, F&& f) {
  if (vec4) {
    float4* x4 = reinterpret_cast<float4*>(x);
    for (int64_t j = threadIdx.x; j < V / 4; j += blockDim.x) {
      float4 v = x4[j];
      f(4 * j + 0, v.x);
      f(4 * j + 1, v.y);
      f(4 * j + 2, v.z);
      f(4 * j + 3, v.w);
      x4[j] = v;
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) f(j, x[j]);
  }
}

// Read-only variant (no store back).
template <typename F>
__device__ inline void read_row(const float* x, int64_t V, bool vec4, F&& f) {
  if (vec4) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int64_t j = threadIdx.x; j < V / 4; j += blockDim.x) {
      const float4 v = x4[j];
      f(v.x);
      f(v.y);
      f(v.z);
      f(v.w);
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) f(x[j]);
  }
}

__global__ void cross_entropy_kernel(float* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                                     double* sums) {
  __shared__ float shared_f[32];
  __shared__ double shared_d[32];
  const bool grad = grad_scale != 0.0;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    float* x = logits + m * V;
    const bool vec4 = V % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    const int32_t t = targets[m];
    if (t == -100) {
      if (grad) for_row(x, V, vec4, [](int64_t, float& v) { v = 0.0f; });
      continue;
    }
    if (t < 0 || t >= V) {  // reported by the caller from sums[2]; the row is left as it is
      if (threadIdx.x == 0) sums[2] = double(m + 1);
      continue;
    }
    const float xt = x[t];  // read before any thread of this block writes the row

    float mx = -INFINITY;
    read_row(x, V, vec4, [&](float v) { mx = v > mx ? v : mx; });
    mx = block_reduce(mx, -INFINITY, Max{}, shared_f);

    double sum = 0.0;
    read_row(x, V, vec4, [&](float v) { sum += double(expf(v - mx)); });
    sum = block_reduce(sum, 0.0, Sum{}, shared_d);

    if (grad) {
      const float f = float(grad_scale / sum), gs = float(grad_scale);
      for_row(x, V, vec4, [&](int64_t j, float& v) {
        const float g = __fmul_rn(expf(v - mx), f);
        v = j == t ? __fsub_rn(g, gs) : g;
      });
    }
    if (threadIdx.x == 0) {
      atomicAdd(&sums[0], log(sum) + double(mx) - double(xt));
      atomicAdd(&sums[1], 1.0);
    }
  }
}

}  // namespace

void cross_entropy_accumulate(float* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                              double* sums, CudaState& s) {
  if (M <= 0 || V <= 0) return;
  const unsigned blocks = unsigned(M < 65535 * 8 ? M : 65535 * 8);
  cross_entropy_kernel<<<blocks, kThreads, 0, s.stream>>>(logits, targets, M, V, grad_scale, sums);
  ZL_CUDA_LAUNCHED();
}

}  // namespace zerolora::kernels::cuda
