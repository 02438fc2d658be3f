// adamw_step as torch.optim.AdamW's single-tensor fp32 path
// (https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html):
//   param.mul_(1 - lr*wd); exp_avg.lerp_(grad, 1-b1); exp_avg_sq.mul_(b2).addcmul_(grad, grad, 1-b2)
//   denom = exp_avg_sq.sqrt() / sqrt(1 - b2^step) + eps; param.addcdiv_(exp_avg, denom, -lr/(1 - b1^step))
// and sum_squares (global-norm clipping).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace zerolora::kernels {

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step) {
  const float decay = float(1.0 - lr * weight_decay);
  const float w1 = float(1.0 - beta1);  // lerp weight
  const float b2 = float(beta2), w2 = float(1.0 - beta2);
  const float step_size = float(lr / (1.0 - std::pow(beta1, double(step))));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(step))));
  const float epsf = float(eps);
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    float p = param[i] * decay;
    const float mi = m[i] + w1 * (g - m[i]);
    const float vi = v[i] * b2 + w2 * g * g;
    p += -step_size * (mi / (std::sqrt(vi) / bc2_sqrt + epsf));
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
  }
}

double sum_squares(const float* x, int64_t n) {
  // fixed chunks summed in order: the same result for any thread count
  const int64_t chunk = 1 << 16;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::vector<double> part(size_t(nchunks), 0.0);
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * chunk);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = c * chunk; i < end; ++i) s += double(x[i]) * double(x[i]);
    part[size_t(c)] = s;
  }
  double total = 0.0;
  for (double p : part) total += p;
  return total;
}

}  // namespace zerolora::kernels
