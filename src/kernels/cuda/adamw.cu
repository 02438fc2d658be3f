// adamw_step as torch.optim.AdamW's single-tensor fp32 path, the same scalars (formed in double on the host,
// rounded once to fp32) and the same fp32 operations in the same order as kernels/cpu/adamw.cpp:
//   p = p (1 - lr wd); m += (1 - b1)(g - m); v = v b2 + (1 - b2) g^2;
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// (sqrtf and the divisions are IEEE-rounded: nvcc's default -prec-sqrt/-prec-div). Like GCC on the CPU,
// nvcc may fuse a multiply and an add into one FMA: that is the only source of difference (<= 1 ulp per op).
//
// sum_squares: two passes in double (per-block partial sums into the context's Reduction scratch, then one
// block over the partials), the result copied to the host (which waits for the stream). The block count
// depends only on n, so the result is the same from run to run.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;  // first-pass blocks at most (partial sums in the scratch)

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, float decay, float w1,
                             float b2, float w2, float step_size, float bc2_sqrt, float eps) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    float p = param[i] * decay;
    const float mi = m[i] + w1 * (g - m[i]);
    const float vi = v[i] * b2 + w2 * g * g;
    p += -step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
  }
}

__device__ inline double block_sum(double v, double* shared /* [32] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;  // the total in thread 0
}

// partial[blockIdx.x] = sum over this block's grid-stride share of x^2 (squares exact in double)
__global__ void sum_squares_partial(const float* x, int64_t n, double* partial) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s += double(x[i]) * double(x[i]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// result[0] = sum of partial[0, count), one block
__global__ void sum_partials(const double* partial, int count, double* result) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum(s, shared);
  if (threadIdx.x == 0) *result = s;
}

}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, CudaState& s) {
  if (n <= 0) return;
  const float decay = float(1.0 - lr * weight_decay);
  const float w1 = float(1.0 - beta1);
  const float b2 = float(beta2), w2 = float(1.0 - beta2);
  const float step_size = float(lr / (1.0 - std::pow(beta1, double(step))));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(step))));
  adamw_kernel<<<grid_for(n, kThreads), kThreads, 0, s.stream>>>(param, grad, m, v, n, decay, w1, b2, w2, step_size,
                                                                  bc2_sqrt, float(eps));
  ZL_CUDA_LAUNCHED();
}

double sum_squares(const float* x, int64_t n, CudaState& s) {
  if (n <= 0) return 0.0;
  const int64_t blocks64 = ceil_div(n, kThreads * 4);  // at least 4 elements per thread before the tree
  const int blocks = int(blocks64 < kMaxPartials ? blocks64 : kMaxPartials);
  double* buf = static_cast<double*>(scratch(s, Scratch::Reduction, sizeof(double) * (kMaxPartials + 1)));
  double* result = buf + kMaxPartials;
  sum_squares_partial<<<blocks, kThreads, 0, s.stream>>>(x, n, buf);
  ZL_CUDA_LAUNCHED();
  sum_partials<<<1, kThreads, 0, s.stream>>>(buf, blocks, result);
  ZL_CUDA_LAUNCHED();
  double total = 0.0;
  copy_to_host(&total, result, sizeof(double), s);
  return total;
}

}  // namespace zerolora::kernels::cuda
