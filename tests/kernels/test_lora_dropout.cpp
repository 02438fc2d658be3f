// LoRA's dropout fused into its products on the CPU (kernels/cpu/lora_dropout.cpp) against the exact products of
// the masked operand in double: u = (mask * x) A^T, dA += du^T (mask * x), dx += mask * (du A). The bound of each
// is the worst case of fp32 summation, gamma_n = n u / (1 - n u) with u = 2^-24 times the sum of the terms'
// magnitudes, n the number of terms plus the roundings outside the sum (the masked value (keep * scale) * x,
// the add into dA or dx): any order of the sums is within it, which is all the blocks change.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "kernels/cpu/dropout_rows.h"
#include "kernels/kernels.h"

using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

namespace {

double gamma(int64_t n) {
  const double u = std::ldexp(1.0, -24);
  return double(n) * u / (1 - double(n) * u);
}

struct Shape {
  int64_t M, in, r;
};

struct Results {
  std::vector<float> u, dA, dx;
};

Results run_fused(const Shape& s, const std::vector<float>& x, const std::vector<float>& du, const std::vector<float>& A,
                  const std::vector<float>& dA0, const std::vector<float>& dx0, const DropoutMask& mask) {
  Results r{std::vector<float>(size_t(s.M * s.r), NAN), dA0, dx0};
  EXPECT_TRUE(lora_dropout_forward<float>(r.u.data(), x.data(), A.data(), s.M, s.in, s.r, mask));
  EXPECT_TRUE(lora_dropout_weight_grad<float>(r.dA.data(), du.data(), x.data(), s.M, s.in, s.r, mask));
  EXPECT_TRUE(lora_dropout_backward_input<float>(r.dx.data(), du.data(), A.data(), s.M, s.in, s.r, mask));
  return r;
}

}  // namespace

TEST(LoraDropoutCpu, FusedProductsWithinFp32BoundsAndIndependentOfThreads) {
  // odd sizes: row blocks and 256-column tasks with tails, r not a power of two; the TinyLlama down_proj width
  // (each at least the 2^19 elements from which the CPU fuses)
  for (const Shape s : {Shape{1031, 521, 5}, Shape{513, 2048, 16}, Shape{131, 5632, 8}}) {
    SCOPED_TRACE("M " + std::to_string(s.M) + " in " + std::to_string(s.in) + " r " + std::to_string(s.r));
    const DropoutMask mask(77, 3, 0.1);
    const auto x = to_float(randn(size_t(s.M * s.in), 1)), du = to_float(randn(size_t(s.M * s.r), 2));
    const auto A = to_float(randn(size_t(s.r * s.in), 3, 0.05));
    const auto dA0 = to_float(randn(size_t(s.r * s.in), 4)), dx0 = to_float(randn(size_t(s.M * s.in), 5));
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const Results one = run_fused(s, x, du, A, dA0, dx0, mask);
    omp_set_num_threads(std::max(2, threads));
    const Results two = run_fused(s, x, du, A, dA0, dx0, mask);
    omp_set_num_threads(threads);
    EXPECT_EQ(std::memcmp(one.u.data(), two.u.data(), one.u.size() * 4), 0) << "u depends on the thread count";
    EXPECT_EQ(std::memcmp(one.dA.data(), two.dA.data(), one.dA.size() * 4), 0) << "dA depends on the thread count";
    EXPECT_EQ(std::memcmp(one.dx.data(), two.dx.data(), one.dx.size() * 4), 0) << "dx depends on the thread count";

    // the masked operand in double (the multiplier is 0 or 1 / (1 - p) as a float)
    std::vector<double> h(size_t(s.M * s.in)), mult(h.size());
    int64_t dropped = 0;
    for (int64_t n = 0; n < s.M * s.in; ++n) {
      mult[size_t(n)] = mask.multiplier(uint64_t(n));
      h[size_t(n)] = mult[size_t(n)] * x[size_t(n)];
      dropped += mult[size_t(n)] == 0;
    }
    EXPECT_GT(dropped, 0);
    int64_t bad = 0;
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t j = 0; j < s.r; ++j) {
        double exact = 0, mag = 0;
        for (int64_t i = 0; i < s.in; ++i) {
          const double p = h[size_t(m * s.in + i)] * A[size_t(j * s.in + i)];
          exact += p, mag += std::abs(p);
        }
        bad += std::abs(one.u[size_t(m * s.r + j)] - exact) > gamma(s.in + 1) * mag;
      }
    EXPECT_EQ(bad, 0) << "u outside its bound";
    bad = 0;
    for (int64_t j = 0; j < s.r; ++j)
      for (int64_t i = 0; i < s.in; ++i) {
        double exact = dA0[size_t(j * s.in + i)], mag = std::abs(exact);
        for (int64_t m = 0; m < s.M; ++m) {
          const double p = double(du[size_t(m * s.r + j)]) * h[size_t(m * s.in + i)];
          exact += p, mag += std::abs(p);
        }
        bad += std::abs(one.dA[size_t(j * s.in + i)] - exact) > gamma(s.M + 2) * mag;
      }
    EXPECT_EQ(bad, 0) << "dA outside its bound";
    bad = 0;
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t i = 0; i < s.in; ++i) {
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < s.r; ++k) {
          const double p = double(du[size_t(m * s.r + k)]) * A[size_t(k * s.in + i)];
          exact += p, mag += std::abs(p);
        }
        const double d0 = dx0[size_t(m * s.in + i)], mu = mult[size_t(m * s.in + i)];
        const double want = d0 + mu * exact, bound = gamma(s.r + 3) * (mu * mag + std::abs(d0));
        bad += std::abs(one.dx[size_t(m * s.in + i)] - want) > bound;
      }
    EXPECT_EQ(bad, 0) << "dx outside its bound";
  }
}

// double keeps the unfused reference path (the finite-difference checks); so does a float operand that fits in
// cache (under 2^19 elements): nothing is written, the caller runs dropout_apply + gemm
TEST(LoraDropoutCpu, DoubleAndSmallOperandsKeepTheUnfusedPath) {
  const DropoutMask mask(1, 0, 0.1);
  const int64_t M = 1024, in = 512, r = 2;  // 2^19 elements: fused in float
  std::vector<double> b(size_t(M * in), 0.0);
  EXPECT_FALSE(lora_dropout_forward<double>(b.data(), b.data(), b.data(), M, in, r, mask));
  EXPECT_FALSE(lora_dropout_weight_grad<double>(b.data(), b.data(), b.data(), M, in, r, mask));
  EXPECT_FALSE(lora_dropout_backward_input<double>(b.data(), b.data(), b.data(), M, in, r, mask));
  std::vector<float> f(size_t(M * in), 1.0f), out(size_t(M * r), -1.0f);
  EXPECT_FALSE(lora_dropout_forward<float>(out.data(), f.data(), f.data(), M - 1, in, r, mask));
  EXPECT_FALSE(lora_dropout_weight_grad<float>(out.data(), f.data(), f.data(), M - 1, in, r, mask));
  EXPECT_FALSE(lora_dropout_backward_input<float>(f.data(), out.data(), f.data(), M - 1, in, r, mask));
  EXPECT_EQ(out, std::vector<float>(size_t(M * r), -1.0f));
  EXPECT_EQ(f, std::vector<float>(size_t(M * in), 1.0f));
  EXPECT_TRUE(lora_dropout_forward<float>(out.data(), f.data(), f.data(), M, in, r, mask));
}

// The mask the CPU applies (cpu::dropout_run, in whichever instruction set's copy this CPU and ONEDNN_MAX_CPU_ISA
// pick: scripts/test-variants.sh runs each) is kernels/dropout.h's definition, bit for bit: kept values are
// (1 / (1 - p)) x, dropped ones 0, for runs anywhere in the element counter, one that wraps its low 32 bits
// included, written or added (into zeros, so the add is exact whatever the compiler fuses).
TEST(DropoutCpu, AppliesTheMaskDefinitionBitForBit) {
  const DropoutMask mask(2024, 5, 0.3);
  const int64_t n = 1000;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = std::sin(float(i)) * 3.0f;
  int64_t kept = 0;
  for (uint64_t n0 : {uint64_t(0), uint64_t(12345), (uint64_t(1) << 32) - 400, (uint64_t(7) << 32) + 99}) {
    for (bool accumulate : {false, true}) {
      std::vector<float> out(n, accumulate ? 0.0f : NAN);
      zerolora::kernels::cpu::dropout_run<float>(out.data(), x.data(), n0, n, mask, accumulate);
      for (int64_t i = 0; i < n; ++i) {
        const bool keep = mask.keep(n0 + uint64_t(i));
        const float want = keep ? mask.keep_scale * x[size_t(i)] : 0.0f;
        kept += keep;
        // a dropped value is a zero of either sign (x times 0, as torch's dropout)
        ASSERT_TRUE(keep ? std::memcmp(&out[size_t(i)], &want, 4) == 0 : out[size_t(i)] == 0.0f)
            << "n0 " << n0 << " element " << i << (accumulate ? " (added)" : "") << ": " << out[size_t(i)] << " vs "
            << want;
      }
    }
  }
  // p = 0.3 over 8000 decisions: about 5600 kept (the binomial's sd is 41)
  EXPECT_NEAR(double(kept), 5600.0, 300.0);
}
