// SwiGLU: out = silu(gate) * up, silu(g) = g sigmoid(g).
// Backward: dsilu/dg = sig (1 + g (1 - sig)); dgate = dout up dsilu, dup = dout silu(gate).
#include "kernels/cpu/common.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const S g = gate[i];
    out[i] = g / (S(1) + cpu::exp_s<S>(-g)) * up[i];
  }
}

template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const S g = gate[i], d = dout[i];
    const S sig = S(1) / (S(1) + cpu::exp_s<S>(-g));
    dgate[i] = d * up[i] * sig * (S(1) + g * (S(1) - sig));
    dup[i] = d * g * sig;
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*, int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*, int64_t);

}  // namespace zerolora::kernels
