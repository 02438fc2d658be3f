// The AMX kernels of the frozen bf16 linears (kernels/cpu/amx_gemm.h): against a double-precision reference on
// the same bf16-rounded operands, against the oneDNN path, on shapes that reach every tail (rows, columns and
// reduction not multiples of 16/32) and every blocking edge; and that linear_forward / linear_backward_input
// take them where they apply. Skips, with one line, on CPUs (or ONEDNN_MAX_CPU_ISA caps) without AMX.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "check.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;
using core::DType;

namespace {

#define SKIP_WITHOUT_AMX()                                                                    \
  if (!cpu::amx_gemm_in_use())                                                                \
  GTEST_SKIP() << (cpu::amx_supported()                                                       \
                       ? "AMX kernels off (ONEDNN_MAX_CPU_ISA below AMX, or ZEROLORA_AMX_GEMM=0)" \
                       : "no AMX-BF16 on this CPU (or the kernel refused the tile state)")

double bf16(double v) { return core::bf16_to_f32(core::f32_to_bf16(float(v))); }

struct Case {
  int64_t M, N, K;
  std::vector<float> x, dy;  // x [M,K], dy [M,N] (f32, rounded to bf16 inside the kernels)
  std::vector<uint16_t> W;   // [N,K] bf16 bits
  Vec Wd;                    // W as double
};

Case make_case(int64_t M, int64_t N, int64_t K, uint64_t seed) {
  Case c{M, N, K, to_float(randn(size_t(M * K), seed)), to_float(randn(size_t(M * N), seed + 1)), {}, {}};
  Vec w = randn(size_t(N * K), seed + 2);
  for (double v : w) {
    c.W.push_back(core::f32_to_bf16(float(v)));
    c.Wd.push_back(core::bf16_to_f32(c.W.back()));
  }
  return c;
}

// The bound: both sides multiply the same bf16 values (products exact in fp32) and sum in fp32, in some order.
// A sum of K terms in fp32 is off by at most (K - 1) u sum|terms| (u = 2^-24, Higham's gamma_{K-1}), the
// reference in double by ~1e-16 of that: |got - ref| <= K 2^-24 sum_k |x_k w_k| + 1e-30 per output.
void expect_forward_exact(const Case& c, const std::vector<float>& y, const std::vector<float>& y0, bool accumulated,
                          const char* what) {
  double worst = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = 0, scale = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = bf16(c.x[size_t(m * c.K + k)]) * c.Wd[size_t(n * c.K + k)];
        ref += p;
        scale += std::abs(p);
      }
      const double before = accumulated ? y0[size_t(m * c.N + n)] : 0.0;
      const double err = std::abs(y[size_t(m * c.N + n)] - (before + ref));
      const double bound = double(c.K + 1) * std::ldexp(1.0, -24) * (scale + std::abs(before)) + 1e-30;
      worst = std::max(worst, err / bound);
    }
  EXPECT_LE(worst, 1.0) << what << " M=" << c.M << " N=" << c.N << " K=" << c.K << " (error / bound)";
}

void expect_backward_exact(const Case& c, const std::vector<float>& dx, const std::vector<float>& dx0,
                           const char* what) {
  double worst = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t k = 0; k < c.K; ++k) {
      double ref = dx0[size_t(m * c.K + k)], scale = std::abs(ref);
      for (int64_t n = 0; n < c.N; ++n) {
        const double p = bf16(c.dy[size_t(m * c.N + n)]) * c.Wd[size_t(n * c.K + k)];
        ref += p;
        scale += std::abs(p);
      }
      const double err = std::abs(dx[size_t(m * c.K + k)] - ref);
      worst = std::max(worst, err / (double(c.N + 1) * std::ldexp(1.0, -24) * scale + 1e-30));
    }
  EXPECT_LE(worst, 1.0) << what << " M=" << c.M << " N=" << c.N << " K=" << c.K << " (error / bound)";
}

void check_case(int64_t M, int64_t N, int64_t K, uint64_t seed) {
  Case c = make_case(M, N, K, seed);
  // forward, overwriting garbage and accumulating into existing values
  std::vector<float> y(size_t(M * N), 1e30f), y0 = to_float(randn(size_t(M * N), seed + 3));
  cpu::amx_linear_forward(y.data(), c.x.data(), c.W.data(), M, N, K, false);
  expect_forward_exact(c, y, y0, false, "forward");
  y = y0;
  cpu::amx_linear_forward(y.data(), c.x.data(), c.W.data(), M, N, K, true);
  expect_forward_exact(c, y, y0, true, "forward, accumulating");
  // dX += dY W
  std::vector<float> dx0 = to_float(randn(size_t(M * K), seed + 4)), dx = dx0;
  cpu::amx_linear_backward_input(dx.data(), c.dy.data(), c.W.data(), M, N, K);
  expect_backward_exact(c, dx, dx0, "backward input");
}

struct Blocking {  // restores the default blocking
  cpu::AmxBlocking saved = cpu::amx_blocking();
  Blocking(int64_t panels, int64_t k_chunk, int64_t rows = 512) { cpu::amx_blocking() = {panels, k_chunk, rows}; }
  ~Blocking() { cpu::amx_blocking() = saved; }
};

}  // namespace

TEST(LinearAmx, MatchesDoubleOnBf16OperandsAtEveryTail) {
  SKIP_WITHOUT_AMX();
  // 32-row blocks and 32-wide panels; odd sizes pad rows (M), weight rows (N) and the reduction (K, odd K
  // leaves a half pair)
  for (int64_t M : {1, 17, 32, 45})
    for (int64_t N : {1, 16, 33, 70})
      for (int64_t K : {1, 31, 32, 67}) check_case(M, N, K, uint64_t(M * 10000 + N * 100 + K));
}

TEST(LinearAmx, MatchesDoubleAcrossBlockingEdges) {
  SKIP_WITHOUT_AMX();
  {
    // one panel per group, reduction chunks of one step: every group / chunk boundary, with tails
    Blocking b(1, 32);
    check_case(64, 96, 160, 1);
    check_case(45, 70, 97, 2);
  }
  {
    // groups of 3 panels over 4 + a partial group; chunks of 2 steps over 5 (+ partial)
    Blocking b(3, 64);
    check_case(96, 224, 288, 3);
    check_case(33, 250, 300, 4);
  }
  {
    // inputs cut into passes of 32 and 64 rows: 100 = 3 x 32 + 4, 150 = 2 x 64 + 22
    Blocking b(2, 64, 32);
    check_case(100, 70, 96, 6);
    Blocking c(2, 64, 64);
    check_case(150, 40, 65, 7);
  }
  check_case(128, 256, 1024, 5);  // the default blocking on a model-like shape (k/v projection, 128 tokens)
}

// linear_forward / linear_backward_input take the AMX kernels for >= 32 rows (bitwise the kernels' result plus the
// bias), and oneDNN below that or when switched off; both paths agree within the fp32-summation bound.
TEST(LinearAmx, LinearDispatchesToAmxAndAgreesWithOneDnn) {
  SKIP_WITHOUT_AMX();
  const int64_t N = 96, K = 160;
  Case c = make_case(64, N, K, 7);
  Vec b = float_exact(randn(size_t(N), 8));
  core::Tensor Wt = core::Tensor::empty(DType::BF16, {N, K});
  std::copy(c.W.begin(), c.W.end(), Wt.bits16());
  core::Tensor bt = core::Tensor::empty(DType::F32, {N});
  for (int64_t n = 0; n < N; ++n) bt.data<float>()[n] = float(b[size_t(n)]);
  FrozenWeight w = FrozenWeight::make(Wt, bt);
  for (int64_t M : {64, 40, 31, 1}) {
    std::vector<float> y(size_t(M * N)), want(y.size()), ydnn(y.size());
    linear_forward<float>(y.data(), c.x.data(), w, M);
    if (M >= 32) {
      cpu::amx_linear_forward(want.data(), c.x.data(), c.W.data(), M, N, K, false);
      for (int64_t i = 0; i < M * N; ++i) want[size_t(i)] += float(b[size_t(i % N)]);
      for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], want[i]) << "forward M=" << M << " at " << i;
    }
    cpu::set_amx_gemm_enabled(false);
    linear_forward<float>(ydnn.data(), c.x.data(), w, M);
    cpu::set_amx_gemm_enabled(true);
    // both within K 2^-24 sum|x w| of the exact sum of the same bf16 products: apart by at most twice that
    Case sub = c;
    sub.M = M;
    std::vector<float> yb(y.size()), ydb(y.size());
    for (int64_t i = 0; i < M * N; ++i) {
      yb[size_t(i)] = y[size_t(i)] - float(b[size_t(i % N)]);
      ydb[size_t(i)] = ydnn[size_t(i)] - float(b[size_t(i % N)]);
    }
    expect_forward_exact(sub, yb, yb, false, "linear_forward (dispatched)");
    expect_forward_exact(sub, ydb, ydb, false, "linear_forward (oneDNN)");

    std::vector<float> dx(size_t(M * K), 0.5f), dxw(dx.size(), 0.5f), dxd(dx.size(), 0.5f);
    linear_backward_input<float>(dx.data(), c.dy.data(), w, M);
    if (M >= 32) {
      cpu::amx_linear_backward_input(dxw.data(), c.dy.data(), c.W.data(), M, N, K);
      for (size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(dx[i], dxw[i]) << "backward M=" << M << " at " << i;
    }
    cpu::set_amx_gemm_enabled(false);
    linear_backward_input<float>(dxd.data(), c.dy.data(), w, M);
    cpu::set_amx_gemm_enabled(true);
    std::vector<float> half(dx.size(), 0.5f);
    expect_backward_exact(sub, dx, half, "linear_backward_input (dispatched)");
    expect_backward_exact(sub, dxd, half, "linear_backward_input (oneDNN)");
  }
}

// NaN and infinity in an input reach the outputs they touch (and only those), as in the oneDNN path.
TEST(LinearAmx, NonFiniteInputsPropagate) {
  SKIP_WITHOUT_AMX();
  const int64_t M = 32, N = 32, K = 64;
  Case c = make_case(M, N, K, 9);
  c.x[size_t(3 * K + 5)] = std::nanf("");
  c.x[size_t(7 * K + 9)] = INFINITY;
  std::vector<float> y(size_t(M * N));
  cpu::amx_linear_forward(y.data(), c.x.data(), c.W.data(), M, N, K, false);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const float v = y[size_t(m * N + n)];
      if (m == 3) EXPECT_TRUE(std::isnan(v));
      else if (m == 7) EXPECT_FALSE(std::isfinite(v));
      else EXPECT_TRUE(std::isfinite(v)) << m << "," << n;
    }
}

// The AMX kernels multiply the plain weight, so prepack() of a BF16 weight makes no blocked copy where they run
// (it would only cost memory); with them off (oneDNN's path) it packs as before where oneDNN's layout is blocked.
TEST(LinearAmx, PrepackIsANoOpForBf16WhereAmxKernelsRun) {
  SKIP_WITHOUT_AMX();
  const int64_t N = 64, K = 96;
  core::Tensor Wt = core::Tensor::zeros(DType::BF16, {N, K});
  FrozenWeight w = FrozenWeight::make(Wt);
  EXPECT_FALSE(w.prepack(512));
  EXPECT_EQ(w.packed, nullptr);
  cpu::set_amx_gemm_enabled(false);
  FrozenWeight v = FrozenWeight::make(Wt);
  const bool did = v.prepack(512);
  cpu::set_amx_gemm_enabled(true);
  EXPECT_EQ(did, v.packed != nullptr);
}
