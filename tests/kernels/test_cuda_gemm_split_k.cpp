// The CUDA fp32 gemm's deterministic split-K (kernels/cuda/gemm.cu) and the fused LoRA dropout products
// against the CPU kernels: odd sizes, beta 0 (C not read: a NaN there stays out) and 1, alpha != 1, padded
// leading dimensions, the transposes lora_linear uses, a shorter last chunk and a single full chunk; and
// determinism (the same call twice gives the same bits). Every test skips where no GPU is visible.
//
// Tolerances: any summation order of K fp32 products, then alpha and beta, stays within
// gamma_{K+2} (sum_k |a_k b_k| |alpha| + |beta c|) of the exact value (gamma_n = n u / (1 - n u), u = 2^-24);
// the exact value is computed in double. A lost or doubled chunk is off by a whole partial product, far above it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "kernels/context.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

#if defined(ZEROLORA_WITH_CUDA)
#include <cuda_runtime.h>

#include "kernels/cuda_backend.h"  // the backend entry points this exercises directly

namespace {

constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff

double gamma(int64_t n) { return double(n) * kU / (1 - double(n) * kU); }

class CudaGemmSplitK : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA split-K gemm test skipped";
    gpu_ = std::make_unique<CudaContext>(0);
  }
  void TearDown() override { cuda::set_gemm_split_k(-1); }
  const Context& ctx() const { return gpu_->ctx(); }
  CudaState& state() const { return *gpu_->ctx().cuda; }
  static int sm_count() {
    int n = 0;
    return cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess ? n : 0;
  }

  DeviceArray<float> upload(const std::vector<float>& h) {
    DeviceArray<float> d(int64_t(h.size()), ctx());
    copy_to_device(d.data(), h.data(), h.size() * sizeof(float), ctx());
    return d;
  }
  std::vector<float> download(const DeviceArray<float>& d) {
    std::vector<float> h(size_t(d.size()));
    copy_to_host(h.data(), d.data(), h.size() * sizeof(float), ctx());
    return h;
  }

 private:
  std::unique_ptr<CudaContext> gpu_;
};

std::vector<float> randn_f(size_t n, uint64_t seed) { return to_float(randn(n, seed)); }

struct GemmCase {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  int64_t pad;  // added to every leading dimension
};

std::string name_of(const GemmCase& c) {
  return std::string(c.ta ? "T" : "N") + (c.tb ? "T" : "N") + " M " + std::to_string(c.M) + " N " +
         std::to_string(c.N) + " K " + std::to_string(c.K) + " alpha " + std::to_string(c.alpha) + " beta " +
         std::to_string(c.beta) + " pad " + std::to_string(c.pad);
}

// got vs the exact product (double) within gamma_{K+2}(sum |a b| |alpha| + |beta c|), element by element
void expect_within_bound(const std::vector<float>& got, const GemmCase& c, const std::vector<float>& A, int64_t lda,
                         const std::vector<float>& B, int64_t ldb, const std::vector<float>& C0, int64_t ldc,
                         const char* what) {
  const double g = gamma(c.K + 2);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      double exact = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double a = c.ta ? A[size_t(k * lda + m)] : A[size_t(m * lda + k)];
        const double b = c.tb ? B[size_t(n * ldb + k)] : B[size_t(k * ldb + n)];
        exact += a * b, mag += std::abs(a * b);
      }
      const double c0 = C0[size_t(m * ldc + n)];
      exact = double(c.alpha) * exact + (c.beta == 0.f ? 0.0 : double(c.beta) * c0);
      const double bound = g * (mag * std::abs(double(c.alpha)) + (c.beta == 0.f ? 0.0 : std::abs(c.beta * c0)));
      const double v = got[size_t(m * ldc + n)];
      if (!(std::abs(v - exact) <= bound)) {
        ADD_FAILURE() << what << " [" << m << ", " << n << "]: got " << v << ", exact " << exact << ", bound " << bound;
        return;
      }
    }
}

}  // namespace

// The automatic rule splits a small output with a long K on any GPU, and leaves a big output whole.
TEST_F(CudaGemmSplitK, RuleSplitsSmallOutputsWithLongK) {
  EXPECT_GE(cuda::gemm_split_k_parts(16, 37, 5001, state()), 2);
  EXPECT_GE(cuda::gemm_split_k_parts(37, 1, 4097, state()), 2);         // a bias gradient (N 1)
  EXPECT_EQ(cuda::gemm_split_k_parts(16, 37, 500, state()), 1);         // K too short
  EXPECT_EQ(cuda::gemm_split_k_parts(16384, 2048, 16384, state()), 1);  // plenty of tiles
  EXPECT_EQ(cuda::gemm_split_k_parts(16384, 16, 2048, state()), 1);     // the forward's u = x A^T
  cuda::set_gemm_split_k(0);
  EXPECT_EQ(cuda::gemm_split_k_parts(16, 37, 5001, state()), 1);
  cuda::set_gemm_split_k(7);
  EXPECT_EQ(cuda::gemm_split_k_parts(13, 11, 1000, state()), 6);  // chunk 192: 5 full parts and one of 40
  cuda::set_gemm_split_k(2);
  EXPECT_EQ(cuda::gemm_split_k_parts(13, 11, 130, state()), 2);  // chunk 128: one full part and one of 2
  // the TinyLlama LoRA weight gradients (K = B*T = 16384) on a GPU with at least 64 SMs
  cuda::set_gemm_split_k(-1);
  if (sm_count() >= 64) {
    EXPECT_GE(cuda::gemm_split_k_parts(2048, 16, 16384, state()), 2);  // dB of q
    EXPECT_GE(cuda::gemm_split_k_parts(16, 2048, 16384, state()), 2);  // dA of q
    EXPECT_GE(cuda::gemm_split_k_parts(256, 16, 16384, state()), 2);   // dB of k
  }
}

// Every transpose pair, beta 0 and 1, against the exact product and the CPU gemm, under the automatic rule, a
// forced split with a shorter last chunk, a forced split into one full chunk and a short one, and no split.
TEST_F(CudaGemmSplitK, MatchesCpuGemm) {
  const std::vector<GemmCase> cases = {
      // lora_linear's weight gradients: dB [out, r] += s dout^T u, dA [r, in] += du^T h (ta, K = rows)
      {true, false, 37, 5, 5001, 2.0f, 1.0f, 0},
      {true, false, 3, 129, 4097, 1.0f, 1.0f, 3},
      {true, false, 37, 1, 4099, 1.0f, 1.0f, 0},  // the bias gradient (N 1)
      {true, false, 16, 70, 3000, 0.5f, 0.0f, 2},
      // the other transposes lora_linear uses (forward u = h A^T: tb; du = s dout B, dx = du A: neither)
      {false, true, 7, 16, 2051, 1.0f, 0.0f, 0},
      {false, false, 9, 16, 1531, 2.0f, 1.0f, 1},
      {true, true, 11, 13, 1200, -1.0f, 1.0f, 5},
  };
  for (const GemmCase& c : cases)
    for (const int mode : {-1, 7, 2, 0}) {
      SCOPED_TRACE(name_of(c) + ", split mode " + std::to_string(mode));
      cuda::set_gemm_split_k(mode);
      const int64_t lda = (c.ta ? c.M : c.K) + c.pad, ldb = (c.tb ? c.K : c.N) + c.pad, ldc = c.N + c.pad;
      const auto A = randn_f(size_t((c.ta ? c.K : c.M) * lda), 1);
      const auto B = randn_f(size_t((c.tb ? c.N : c.K) * ldb), 2);
      const auto C0 = randn_f(size_t(c.M * ldc), 3);
      auto C_gpu = C0;
      if (c.beta == 0.f) C_gpu[0] = std::numeric_limits<float>::quiet_NaN();  // beta 0 must not read C
      if (mode == 7) {
        EXPECT_GE(cuda::gemm_split_k_parts(c.M, c.N, c.K, state()), 2);
      }
      auto d_A = upload(A), d_B = upload(B), d_C = upload(C_gpu);
      gemm<float>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, d_A.data(), lda, d_B.data(), ldb, c.beta, d_C.data(), ldc, ctx());
      const auto got = download(d_C);
      expect_within_bound(got, c, A, lda, B, ldb, C0, ldc, "gpu");
      std::vector<float> cpu = C0;
      gemm<float>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, cpu.data(), ldc);
      expect_within_bound(cpu, c, A, lda, B, ldb, C0, ldc, "cpu");
      // the padding between rows is left as it was
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = c.N; n < ldc; ++n)
          if (std::memcmp(&got[size_t(m * ldc + n)], &C0[size_t(m * ldc + n)], sizeof(float)) != 0) {
            ADD_FAILURE() << "padding [" << m << ", " << n << "] written";
            return;
          }
    }
}

// The same product twice (other work and a grown scratch in between) gives the same bits: split-K adds its
// partials in a fixed order. The shape of a TinyLlama k/v dB (256 x 16, K 16384) and of a dA (16 x 2048).
TEST_F(CudaGemmSplitK, BitwiseDeterministic) {
  struct Shape {
    bool ta;
    int64_t M, N, K;
  };
  for (const Shape& sh : {Shape{true, 256, 16, 16384}, Shape{true, 16, 2048, 16384}, Shape{true, 37, 5, 5001}}) {
    SCOPED_TRACE("M " + std::to_string(sh.M) + " N " + std::to_string(sh.N) + " K " + std::to_string(sh.K));
    const int parts = cuda::gemm_split_k_parts(sh.M, sh.N, sh.K, state());
    std::printf("  M %lld N %lld K %lld: %d parts (%d SMs)\n", (long long)sh.M, (long long)sh.N, (long long)sh.K, parts,
                sm_count());
    if (sm_count() >= 64) {
      EXPECT_GE(parts, 2);
    }
    const auto A = randn_f(size_t(sh.K * sh.M), 4), B = randn_f(size_t(sh.K * sh.N), 5),
               C0 = randn_f(size_t(sh.M * sh.N), 6);
    auto d_A = upload(A), d_B = upload(B);
    std::vector<float> runs[2];
    for (int run = 0; run < 2; ++run) {
      auto d_C = upload(C0);
      gemm<float>(true, false, sh.M, sh.N, sh.K, 0.5f, d_A.data(), sh.M, d_B.data(), sh.N, 1.f, d_C.data(), sh.N,
                  ctx());
      runs[run] = download(d_C);
      if (run == 0) {  // something else between: a bigger split product grows the scratch
        DeviceArray<float> big(64 * 4096, ctx()), bigc(64 * 64, ctx());
        fill_zero<float>(big.data(), big.size(), ctx());
        gemm<float>(true, false, 64, 64, 4096, 1.f, big.data(), 64, big.data(), 64, 0.f, bigc.data(), 64, ctx());
      }
    }
    ASSERT_EQ(runs[0].size(), runs[1].size());
    EXPECT_EQ(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)), 0)
        << "two runs of the same split-K product differ";
    const GemmCase c{true, false, sh.M, sh.N, sh.K, 0.5f, 1.f, 0};
    expect_within_bound(runs[0], c, A, sh.M, B, sh.N, C0, sh.N, "gpu");
  }
}

// The fused LoRA dropout products (lora_linear on the GPU) against the CPU's dropout_apply + gemm:
//   u [M, r] = drop(x) A^T,   dA [r, in] += du^T drop(x),   dx [M, in] += drop(du A)
// within the bound above (K = in for u, M for dA, r for dx; the masked values are the same fp32 numbers on both
// sides), and u and dA bitwise equal over two runs. An r it has no kernel for returns false and touches nothing.
TEST_F(CudaGemmSplitK, FusedLoraDropoutMatchesCpu) {
  struct Shape {
    int64_t M, in, r;
  };
  for (const Shape& sh :
       {Shape{1000, 333, 16}, Shape{4097, 130, 8}, Shape{77, 5, 4}, Shape{300, 2049, 32}, Shape{130, 64, 64}}) {
    SCOPED_TRACE("M " + std::to_string(sh.M) + " in " + std::to_string(sh.in) + " r " + std::to_string(sh.r));
    const DropoutMask mask(1234, 3, 0.1);
    const auto x = randn_f(size_t(sh.M * sh.in), 7), du = randn_f(size_t(sh.M * sh.r), 8),
               A = randn_f(size_t(sh.r * sh.in), 9), dA0 = randn_f(size_t(sh.r * sh.in), 10),
               dx0 = randn_f(size_t(sh.M * sh.in), 11);
    // CPU: h = drop(x); dA += du^T h; h2 = du A; dx += drop(h2)
    std::vector<float> h(x.size()), dA = dA0, h2(x.size()), dx = dx0;
    dropout_apply<float>(h.data(), x.data(), sh.M, sh.in, mask, false);
    gemm<float>(true, false, sh.r, sh.in, sh.M, 1.f, du.data(), sh.r, h.data(), sh.in, 1.f, dA.data(), sh.in);
    gemm<float>(false, false, sh.M, sh.in, sh.r, 1.f, du.data(), sh.r, A.data(), sh.in, 0.f, h2.data(), sh.in);
    dropout_apply<float>(dx.data(), h2.data(), sh.M, sh.in, mask, true);

    std::vector<float> u(size_t(sh.M * sh.r));
    gemm<float>(false, true, sh.M, sh.r, sh.in, 1.f, h.data(), sh.in, A.data(), sh.in, 0.f, u.data(), sh.r);

    auto d_x = upload(x), d_du = upload(du), d_A = upload(A);
    std::vector<float> got_u[2];
    for (int run = 0; run < 2; ++run) {
      auto d_u = upload(std::vector<float>(size_t(sh.M * sh.r), std::numeric_limits<float>::quiet_NaN()));
      ASSERT_TRUE(cuda::lora_dropout_forward(d_u.data(), d_x.data(), d_A.data(), sh.M, sh.in, sh.r, mask, state()));
      got_u[run] = download(d_u);
    }
    EXPECT_EQ(std::memcmp(got_u[0].data(), got_u[1].data(), got_u[0].size() * sizeof(float)), 0)
        << "two runs of the fused u differ";
    const GemmCase cu{false, true, sh.M, sh.r, sh.in, 1.f, 0.f, 0};
    expect_within_bound(got_u[0], cu, h, sh.in, A, sh.in, u, sh.r, "gpu u");
    expect_within_bound(u, cu, h, sh.in, A, sh.in, u, sh.r, "cpu u");

    std::vector<float> got_dA[2];
    for (int run = 0; run < 2; ++run) {
      auto d_dA = upload(dA0);
      ASSERT_TRUE(
          cuda::lora_dropout_weight_grad(d_dA.data(), d_du.data(), d_x.data(), sh.M, sh.in, sh.r, mask, state()));
      got_dA[run] = download(d_dA);
    }
    EXPECT_EQ(std::memcmp(got_dA[0].data(), got_dA[1].data(), got_dA[0].size() * sizeof(float)), 0)
        << "two runs of the fused dA differ";
    auto d_dx = upload(dx0);
    ASSERT_TRUE(
        cuda::lora_dropout_backward_input(d_dx.data(), d_du.data(), d_A.data(), sh.M, sh.in, sh.r, mask, state()));
    const auto got_dx = download(d_dx);

    // dA: a gemm with K = M over du and h (beta 1), both sides against the exact value
    const GemmCase ca{true, false, sh.r, sh.in, sh.M, 1.f, 1.f, 0};
    expect_within_bound(got_dA[0], ca, du, sh.r, h, sh.in, dA0, sh.in, "gpu dA");
    expect_within_bound(dA, ca, du, sh.r, h, sh.in, dA0, sh.in, "cpu dA");
    // dx = dx0 + mult * (du A): the product within gamma_{r+2} sum |du A|, times the multiplier, plus one
    // rounding of the sum
    const double g = gamma(sh.r + 3);
    bool reported = false;
    for (int64_t m = 0; m < sh.M && !reported; ++m)
      for (int64_t i = 0; i < sh.in; ++i) {
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < sh.r; ++k) {
          const double p = double(du[size_t(m * sh.r + k)]) * A[size_t(k * sh.in + i)];
          exact += p, mag += std::abs(p);
        }
        const double mult = mask.multiplier(uint64_t(m * sh.in + i));
        const double d0 = dx0[size_t(m * sh.in + i)];
        const double want = d0 + mult * exact, bound = g * (mult * mag + std::abs(d0));
        for (const auto& [v, what] : {std::pair<double, const char*>{got_dx[size_t(m * sh.in + i)], "gpu dx"},
                                      std::pair<double, const char*>{dx[size_t(m * sh.in + i)], "cpu dx"}})
          if (!(std::abs(v - want) <= bound)) {
            ADD_FAILURE() << what << " [" << m << ", " << i << "]: got " << v << ", exact " << want << ", bound "
                          << bound;
            reported = true;
            break;
          }
        if (reported) break;
      }
  }
  // no kernel for r 12: false, nothing written
  const DropoutMask mask(1, 0, 0.1);
  DeviceArray<float> d(64, ctx());
  EXPECT_FALSE(cuda::lora_dropout_forward(d.data(), d.data(), d.data(), 4, 4, 12, mask, state()));
  EXPECT_FALSE(cuda::lora_dropout_weight_grad(d.data(), d.data(), d.data(), 4, 4, 12, mask, state()));
  EXPECT_FALSE(cuda::lora_dropout_backward_input(d.data(), d.data(), d.data(), 4, 4, 12, mask, state()));
}

#else

TEST(CudaGemmSplitK, NotBuilt) { GTEST_SKIP() << "built without CUDA: CUDA split-K gemm test skipped"; }

#endif
