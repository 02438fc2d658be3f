// Cross-entropy over a chunk of rows, in place (logits become the scaled gradient).
// Per row: mx = max(x), sum = sum exp(x - mx) (exps in S, summed in double),
//   loss = log(sum) + mx - x[target],  grad = grad_scale * (exp(x - mx) / sum - onehot(target)).
// Row losses are summed in row order, so the result does not depend on the thread count.
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/common.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
double cross_entropy_forward_backward(S* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                                      int64_t* count) {
  int64_t n = 0;
  for (int64_t m = 0; m < M; ++m) {
    const int32_t t = targets[m];
    if (t == -100) continue;
    core::check(t >= 0 && t < V, "cross_entropy",
                "target " + std::to_string(t) + " at row " + std::to_string(m) + " is outside the vocabulary [0, " +
                    std::to_string(V) + ")",
                "labels must be token ids or -100 (ignored)");
    ++n;
  }
  if (count) *count = n;
  std::vector<double> row_loss(size_t(M), 0.0);
  const bool grad = grad_scale != 0.0;
#pragma omp parallel for schedule(static) if (M * V > 65536)
  for (int64_t m = 0; m < M; ++m) {
    S* x = logits + m * V;
    const int32_t t = targets[m];
    if (t == -100) {
      if (grad)
        for (int64_t j = 0; j < V; ++j) x[j] = S(0);
      continue;
    }
    S mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;
    const S xt = x[t];
    double sum = 0.0;
    if (grad) {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < V; ++j) {
        const S e = cpu::exp_s<S>(x[j] - mx);
        x[j] = e;
        sum += double(e);
      }
      const S f = S(grad_scale / sum);
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) x[j] *= f;
      x[t] -= S(grad_scale);
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < V; ++j) sum += double(cpu::exp_s<S>(x[j] - mx));
    }
    row_loss[m] = std::log(sum) + double(mx) - double(xt);
  }
  double loss = 0.0;
  for (int64_t m = 0; m < M; ++m) loss += row_loss[m];
  return loss;
}

template double cross_entropy_forward_backward<float>(float*, const int32_t*, int64_t, int64_t, double, int64_t*);
template double cross_entropy_forward_backward<double>(double*, const int32_t*, int64_t, int64_t, double,
                                                       int64_t*);

}  // namespace zerolora::kernels
