// RMSNorm forward/backward (HF LlamaRMSNorm), as kernels/cpu/rmsnorm.cpp: one block per row, the row's sum
// of squares (forward) and sum dy_i w_i x_i (backward) accumulated in double, rstd formed in double and
// rounded once to fp32. The only difference from the CPU is the order of the double summation (a tree over
// the block instead of the CPU's SIMD lanes): the squares are exact in double, so rstd agrees to within an
// ulp of fp32 (almost always bit for bit); the element-wise fp32 formulas are the CPU's.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ inline double block_sum(double v, double* shared /* [32] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* inp, const float* weight, int64_t M,
                                       int64_t C, double eps) {
  __shared__ double shared[32];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const float* x = inp + m * C;
    float* o = out + m * C;
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += double(x[c]) * double(x[c]);
    ss = block_sum(ss, shared);
    const float r = float(1.0 / sqrt(ss / double(C) + eps));
    if (threadIdx.x == 0) rstd[m] = r;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = __fmul_rn(x[c], r) * weight[c];
  }
}

// dx_j += r w_j dy_j - (r^3 / C) x_j sum_i(dy_i w_i x_i)
__global__ void rmsnorm_backward_kernel(float* dinp, const float* dout, const float* inp, const float* weight,
                                        const float* rstd, int64_t M, int64_t C) {
  __shared__ double shared[32];
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const float* x = inp + m * C;
    const float* dy = dout + m * C;
    float* dx = dinp + m * C;
    const double r = double(rstd[m]);
    double dot = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += double(__fmul_rn(dy[c], weight[c])) * double(x[c]);
    dot = block_sum(dot, shared);
    const float a = float(r);
    const float b = float(r * r * r * dot / double(C));
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dx[c] += a * weight[c] * dy[c] - b * x[c];
  }
}

unsigned row_blocks(int64_t M) { return unsigned(M < 65535 * 8 ? M : 65535 * 8); }

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t M, int64_t C,
                     double eps, CudaState& s) {
  if (M <= 0) return;
  rmsnorm_forward_kernel<<<row_blocks(M), kThreads, 0, s.stream>>>(out, rstd, inp, weight, M, C, eps);
  ZL_CUDA_LAUNCHED();
}

void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t M, int64_t C, CudaState& s) {
  if (M <= 0 || C <= 0) return;
  rmsnorm_backward_kernel<<<row_blocks(M), kThreads, 0, s.stream>>>(dinp, dout, inp, weight, rstd, M, C);
  ZL_CUDA_LAUNCHED();
}

}  // namespace zerolora::kernels::cuda
