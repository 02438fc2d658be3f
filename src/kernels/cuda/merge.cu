// add_scaled_product (kernels.h) on the GPU: one thread per entry of W, the r products summed in k order with
// fma from 0 in double, then fma(scale, sum, W) rounded once to the entry's type: the CPU's operations
// (kernels/cpu/merge_update.cpp) in the CPU's order, so the same bits.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {
template <typename S>
__global__ void add_scaled_product_kernel(S* __restrict__ W, const float* __restrict__ left,
                                          const float* __restrict__ right, int64_t rows, int64_t cols, int64_t r,
                                          double scale) {
  const int64_t n = rows * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e / cols, i = e % cols;
    double sum = 0.0;
    for (int64_t k = 0; k < r; ++k) sum = fma(double(left[o * r + k]), double(right[k * cols + i]), sum);
    W[e] = S(fma(scale, sum, double(W[e])));
  }
}

template <typename S>
void launch(S* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r, double scale,
            CudaState& s) {
  if (rows <= 0 || cols <= 0) return;
  add_scaled_product_kernel<S><<<grid_for(rows * cols), 256, 0, s.stream>>>(W, left, right, rows, cols, r, scale);
  ZL_CUDA_LAUNCHED();
}
}  // namespace

void add_scaled_product(float* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, CudaState& s) {
  launch(W, left, right, rows, cols, r, scale, s);
}

void add_scaled_product(double* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, CudaState& s) {
  launch(W, left, right, rows, cols, r, scale, s);
}

}  // namespace zerolora::kernels::cuda
