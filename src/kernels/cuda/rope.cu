// RoPE in HF rotate_half layout, in place (kernels/cpu/rope.cpp): one thread per rotated pair (m, h, i),
// i < HD/2, pairing element i with i + HD/2 of head h of row m; the table row is cos_sin[positions[m]].
//   forward:  x'[i] = x[i] c - x[i+h] s,   x'[i+h] = x[i+h] c + x[i] s      (rotation by +angle)
//   backward: the same with s negated (rotation by -angle, the transpose)
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void rope_kernel(float* x, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H,
                            int64_t half, float sign) {
  const int64_t pairs_per_row = H * half, n = M * pairs_per_row;
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = p / pairs_per_row, rest = p - m * pairs_per_row;
    const int64_t h = rest / half, i = rest - h * half;
    const float2 cs = reinterpret_cast<const float2*>(cos_sin)[int64_t(positions[m]) * half + i];
    const float c = cs.x, s = sign * cs.y;
    float* a = x + (m * H + h) * 2 * half;
    const float x0 = a[i], x1 = a[i + half];
    a[i] = x0 * c - x1 * s;
    a[i + half] = x1 * c + x0 * s;
  }
}

void rotate(float* x, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD, float sign,
            CudaState& s) {
  core::check(HD > 0 && HD % 2 == 0, "rope", "head dim " + std::to_string(HD) + " is not a positive even number",
              "check head_dim / hidden_size / num_attention_heads in config.json");
  const int64_t n = M * H * (HD / 2);
  if (n <= 0) return;
  rope_kernel<<<grid_for(n, kThreads), kThreads, 0, s.stream>>>(x, cos_sin, positions, M, H, HD / 2, sign);
  ZL_CUDA_LAUNCHED();
}

}  // namespace

void rope_forward(float* x, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                  CudaState& s) {
  rotate(x, cos_sin, positions, M, H, HD, 1.0f, s);
}

void rope_backward(float* dx, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                   CudaState& s) {
  rotate(dx, cos_sin, positions, M, H, HD, -1.0f, s);
}

}  // namespace zerolora::kernels::cuda
