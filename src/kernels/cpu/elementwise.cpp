// Element-wise helpers of the model's block on the CPU.
#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
void add(S* out, const S* a, const S* b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template void add<float>(float*, const float*, const float*, int64_t);
template void add<double>(double*, const double*, const double*, int64_t);

}  // namespace zerolora::kernels
