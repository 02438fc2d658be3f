// gemm: C[M,N] = alpha op(A) op(B) + beta C, row-major (cblas RowMajor semantics).
// float -> dnnl_sgemm (row-major already, see oneapi/dnnl/dnnl.h); double -> a plain threaded loop
// used by the finite-difference checks.
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta,
                                C, ldc);
  core::check(st == dnnl_success, "gemm",
              "dnnl_sgemm failed (status " + std::to_string(int(st)) + ") for M=" + std::to_string(M) +
                  " N=" + std::to_string(N) + " K=" + std::to_string(K),
              "check the leading dimensions");
}

void dgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
           int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
#pragma omp parallel if (double(M) * double(N) * double(K) > 1e5)
  {
    std::vector<double> row(static_cast<size_t>(N));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < M; ++i) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t k = 0; k < K; ++k) {
        double a = trans_a ? A[k * lda + i] : A[i * lda + k];
        if (trans_b) {
          for (int64_t j = 0; j < N; ++j) row[j] += a * B[j * ldb + k];
        } else {
          const double* b = B + k * ldb;
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) row[j] += a * b[j];
        }
      }
      double* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] = alpha * row[j] + (beta == 0.0 ? 0.0 : beta * c[j]);
    }
  }
}

}  // namespace

template <typename S>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
          const S* B, int64_t ldb, S beta, S* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if constexpr (std::is_same_v<S, float>)
    sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    dgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace zerolora::kernels
