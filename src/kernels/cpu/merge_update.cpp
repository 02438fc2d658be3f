// add_scaled_product (kernels.h): a LoRA merge's W += scale * left right, entry by entry in double with
// explicit fused multiply-adds, so that the CUDA kernel (kernels/cuda/merge.cu) gives the same bits.
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace zerolora::kernels {

// Rows are independent, so the loop parallelises without races; a row's sums are formed in a double buffer,
// k by k, each step one fma per entry (the order the GPU kernel keeps per entry).
template <typename S>
void add_scaled_product(S* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale) {
#pragma omp parallel
  {
    std::vector<double> row(size_t(cols), 0.0);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < rows; ++o) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t k = 0; k < r; ++k) {
        const double b = left[o * r + k];
        const float* a = right + k * cols;
        for (int64_t i = 0; i < cols; ++i) row[size_t(i)] = std::fma(b, double(a[i]), row[size_t(i)]);
      }
      S* w = W + o * cols;
      for (int64_t i = 0; i < cols; ++i) w[i] = S(std::fma(scale, row[size_t(i)], double(w[i])));
    }
  }
}

template void add_scaled_product<float>(float*, const float*, const float*, int64_t, int64_t, int64_t, double);
template void add_scaled_product<double>(double*, const float*, const float*, int64_t, int64_t, int64_t, double);

}  // namespace zerolora::kernels
