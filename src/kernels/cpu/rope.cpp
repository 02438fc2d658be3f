// RoPE in HF rotate_half layout (element i pairs with i + HD/2), in place.
//   forward:  x'[i] = x[i] c - x[i+h] s,   x'[i+h] = x[i+h] c + x[i] s      (rotation by +angle)
//   backward: the transpose, i.e. rotation by -angle:
//             d[i]  = d'[i] c + d'[i+h] s, d[i+h]  = d'[i+h] c - d'[i] s
#include <cmath>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {

void check_head_dim(int64_t HD, const char* fn) {
  core::check(HD > 0 && HD % 2 == 0, fn, "head dim " + std::to_string(HD) + " is not a positive even number",
              "check head_dim / hidden_size / num_attention_heads in config.json");
}

}  // namespace

// For float the angle is formed as HF does (fp32 product of fp32 inv_freq and the position) and its
// cos/sin rounded to float, so tables match transformers' LlamaRotaryEmbedding to ~1 ulp; double
// keeps the exact angle.
template <typename S>
void rope_table(S* cos_sin, const double* inv_freq, int64_t max_pos, int64_t HD) {
  check_head_dim(HD, "rope_table");
  const int64_t half = HD / 2;
#pragma omp parallel for schedule(static) if (max_pos * half > 65536)
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      double angle;
      if constexpr (std::is_same_v<S, float>)
        angle = double(float(inv_freq[i]) * float(p));
      else
        angle = inv_freq[i] * double(p);
      cos_sin[(p * half + i) * 2 + 0] = S(std::cos(angle));
      cos_sin[(p * half + i) * 2 + 1] = S(std::sin(angle));
    }
}

namespace {

// sign = +1: rotate by +angle (forward); -1: by -angle (backward)
template <typename S>
void rope_rotate(S* x, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD, S sign) {
  check_head_dim(HD, "rope");
  const int64_t half = HD / 2;
#pragma omp parallel for schedule(static) if (M * H * HD > 16384)
  for (int64_t m = 0; m < M; ++m) {
    const S* cs = cos_sin + int64_t(positions[m]) * half * 2;
    for (int64_t h = 0; h < H; ++h) {
      S* a = x + (m * H + h) * HD;
      S* b = a + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const S c = cs[2 * i], s = sign * cs[2 * i + 1];
        const S x0 = a[i], x1 = b[i];
        a[i] = x0 * c - x1 * s;
        b[i] = x1 * c + x0 * s;
      }
    }
  }
}

}  // namespace

template <typename S>
void rope_forward(S* x, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD) {
  rope_rotate(x, cos_sin, positions, M, H, HD, S(1));
}

template <typename S>
void rope_backward(S* dx, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD) {
  rope_rotate(dx, cos_sin, positions, M, H, HD, S(-1));
}

template void rope_table<float>(float*, const double*, int64_t, int64_t);
template void rope_table<double>(double*, const double*, int64_t, int64_t);
template void rope_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
template void rope_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t);
template void rope_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
template void rope_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t);

}  // namespace zerolora::kernels
