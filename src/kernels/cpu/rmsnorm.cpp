// RMSNorm as HF LlamaRMSNorm: out = (inp * rstd) * weight, rstd = 1/sqrt(mean(inp^2) + eps),
// the row sum of squares accumulated in double.
//
// Backward (weight frozen): with y_i = w_i x_i r and dr/dx_j = -r^3 x_j / C,
//   dx_j = r w_j dy_j - (r^3 / C) x_j sum_i(dy_i w_i x_i)
#include <cmath>

#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* inp, const S* weight, int64_t M, int64_t C, double eps) {
#pragma omp parallel for schedule(static) if (M * C > 16384)
  for (int64_t m = 0; m < M; ++m) {
    const S* x = inp + m * C;
    S* o = out + m * C;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * double(x[c]);
    const S r = S(1.0 / std::sqrt(ss / double(C) + eps));
    rstd[m] = r;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = (x[c] * r) * weight[c];
  }
}

template <typename S>
void rmsnorm_backward(S* dinp, const S* dout, const S* inp, const S* weight, const S* rstd, int64_t M,
                      int64_t C) {
#pragma omp parallel for schedule(static) if (M * C > 16384)
  for (int64_t m = 0; m < M; ++m) {
    const S* x = inp + m * C;
    const S* dy = dout + m * C;
    S* dx = dinp + m * C;
    const double r = double(rstd[m]);
    double dot = 0.0;  // sum_i dy_i w_i x_i
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += double(dy[c] * weight[c]) * double(x[c]);
    const S a = S(r);
    const S b = S(r * r * r * dot / double(C));
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dx[c] += a * weight[c] * dy[c] - b * x[c];
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double);
template void rmsnorm_backward<float>(float*, const float*, const float*, const float*, const float*, int64_t,
                                      int64_t);
template void rmsnorm_backward<double>(double*, const double*, const double*, const double*, const double*,
                                       int64_t, int64_t);

}  // namespace zerolora::kernels
