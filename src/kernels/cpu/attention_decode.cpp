// Attention of a few new tokens against a KV cache (generation): scores and sums in double, one
// (token, head) pair per task.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
void attention_decode(S* out, const S* q, const S* k_cache, const S* v_cache, int64_t n, int64_t p0, int64_t NH,
                      int64_t NKV, int64_t HD, int64_t window) {
  core::check(window >= 0, "attention_decode", "negative window " + std::to_string(window));
  const int64_t Q = NH * HD, KV = NKV * HD, group = NH / NKV;
  const double scale = 1.0 / std::sqrt(double(HD));
  // Decoding one token of a small model is microseconds of work: waking threads would cost more.
  const bool worth_threads = n * NH * (p0 + n) * HD > (int64_t(1) << 16);
#pragma omp parallel if (worth_threads)
  {
    std::vector<double> score(static_cast<size_t>(p0 + n)), acc(static_cast<size_t>(HD));
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < n * NH; ++task) {
      const int64_t i = task / NH, h = task % NH, g = h / group, last = p0 + i;
      const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
      const S* qi = q + i * Q + h * HD;
      double max_score = -INFINITY;
      for (int64_t s = first; s <= last; ++s) {
        const S* k = k_cache + s * KV + g * HD;
        double dot = 0;
        for (int64_t d = 0; d < HD; ++d) dot += double(qi[d]) * double(k[d]);
        score[size_t(s)] = dot * scale;
        max_score = std::max(max_score, score[size_t(s)]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t s = first; s <= last; ++s) {
        const double p = std::exp(score[size_t(s)] - max_score);
        sum += p;
        const S* v = v_cache + s * KV + g * HD;
        for (int64_t d = 0; d < HD; ++d) acc[size_t(d)] += p * double(v[d]);
      }
      S* o = out + i * Q + h * HD;
      for (int64_t d = 0; d < HD; ++d) o[d] = S(acc[size_t(d)] / sum);
    }
  }
}

template void attention_decode<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                      int64_t, int64_t, int64_t);
template void attention_decode<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                       int64_t, int64_t, int64_t, int64_t);

}  // namespace zerolora::kernels
