// gemm (all transposes), linear_forward / linear_backward_input for F32, F64 and BF16 weights,
// FrozenWeight validation and prepacking.
#include <gtest/gtest.h>

#include <cmath>

#include "check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;
using core::DType;
using core::Tensor;

namespace {

// op(X)[r][c] of a row-major matrix with leading dimension ld
double at(const Vec& X, bool trans, int64_t ld, int64_t r, int64_t c) {
  return trans ? X[size_t(c * ld + r)] : X[size_t(r * ld + c)];
}

Tensor tensor_of(const Vec& v, DType dt, core::Shape shape) {
  Tensor f = Tensor::empty(DType::F64, shape);
  std::copy(v.begin(), v.end(), f.data<double>());
  return f.to(dt);
}

// y = x W^T (+ b) in double, straight from the definition
Vec naive_linear(const Vec& x, const Vec& W, const Vec* bias, int64_t M, int64_t N, int64_t K) {
  Vec y(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? (*bias)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * W[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

Vec bf16_round(const Vec& v) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = core::bf16_to_f32(core::f32_to_bf16(float(v[i])));
  return r;
}

}  // namespace

TEST(Gemm, DoubleMatchesDefinitionForAllTransposes) {
  const int64_t M = 7, N = 5, K = 6;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
      Vec A = randn(size_t((ta ? K : M) * lda), 1), B = randn(size_t((tb ? N : K) * ldb), 2);
      Vec C = randn(size_t(M * ldc), 3), want = C;
      const double alpha = 0.7, beta = -1.3;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += at(A, ta, lda, i, k) * at(B, tb, ldb, k, j);
          want[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
        }
      gemm<double>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
      EXPECT_LT(rel_err(C, want), 1e-14) << "trans_a=" << ta << " trans_b=" << tb;
    }
}

TEST(Gemm, BetaZeroIgnoresGarbageInC) {
  Vec A = randn(6, 1), B = randn(6, 2), C(4, NAN);
  gemm<double>(false, false, 2, 2, 3, 1.0, A.data(), 3, B.data(), 2, 0.0, C.data(), 2);
  for (double c : C) EXPECT_TRUE(std::isfinite(c));
}

TEST(Gemm, FloatMatchesDoubleForAllTransposes) {
  const int64_t M = 33, N = 17, K = 45;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = ta ? M : K, ldb = tb ? K : N;
      Vec A = float_exact(randn(size_t(M * K), 4)), B = float_exact(randn(size_t(K * N), 5));
      Vec C = float_exact(randn(size_t(M * N), 6));
      auto Af = to_float(A), Bf = to_float(B), Cf = to_float(C);
      gemm<double>(ta, tb, M, N, K, 0.5, A.data(), lda, B.data(), ldb, 0.25, C.data(), N);
      gemm<float>(ta, tb, M, N, K, 0.5f, Af.data(), lda, Bf.data(), ldb, 0.25f, Cf.data(), N);
      EXPECT_LT(rel_err(Cf, C), kFloatTol) << "trans_a=" << ta << " trans_b=" << tb;
    }
}

// L = sum(C * R), C = op(A) op(B): dop(A) = R op(B)^T, dop(B) = op(A)^T R, each computed with
// gemm in other transpose modes and checked against central differences.
TEST(Gemm, TransposesGiveConsistentGradients) {
  const int64_t M = 4, N = 3, K = 5;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = ta ? M : K, ldb = tb ? K : N;
      Vec A = randn(size_t(M * K), 7), B = randn(size_t(K * N), 8), R = randn(size_t(M * N), 9);
      auto loss = [&] {
        Vec C(size_t(M * N));
        gemm<double>(ta, tb, M, N, K, 1.0, A.data(), lda, B.data(), ldb, 0.0, C.data(), N);
        return dot(C, R);
      };
      Vec dA(A.size()), dB(B.size());
      // dA: if !ta, dA[M,K] = R[M,N] op(B)^T; if ta, dA[K,M] = op(B) R^T.
      if (!ta)
        gemm<double>(false, !tb, M, K, N, 1.0, R.data(), N, B.data(), ldb, 0.0, dA.data(), K);
      else
        gemm<double>(tb, true, K, M, N, 1.0, B.data(), ldb, R.data(), N, 0.0, dA.data(), M);
      // dB: if !tb, dB[K,N] = op(A)^T R; if tb, dB[N,K] = R^T op(A).
      if (!tb)
        gemm<double>(!ta, false, K, N, M, 1.0, A.data(), lda, R.data(), N, 0.0, dB.data(), N);
      else
        gemm<double>(true, ta, N, K, M, 1.0, R.data(), N, A.data(), lda, 0.0, dB.data(), K);
      EXPECT_LT(rel_err(dA, numeric_grad(A, loss)), kGradTol) << "dA trans_a=" << ta << " trans_b=" << tb;
      EXPECT_LT(rel_err(dB, numeric_grad(B, loss)), kGradTol) << "dB trans_a=" << ta << " trans_b=" << tb;
    }
}

TEST(FrozenWeight, MakeValidatesShapesAndDtypes) {
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::F32, {6})), core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::F32, {2, 3, 4})), core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::I32, {2, 3})), core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::F32, {2, 3}), Tensor::zeros(DType::F32, {3})), core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::F32, {2, 3}), Tensor::zeros(DType::F32, {2, 1})),
               core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::F32, {2, 3}), Tensor::zeros(DType::F64, {2})), core::Error);
  EXPECT_THROW(FrozenWeight::make(Tensor::zeros(DType::BF16, {2, 3}), Tensor::zeros(DType::BF16, {2})),
               core::Error);
  auto w = FrozenWeight::make(Tensor::zeros(DType::BF16, {2, 3}), Tensor::zeros(DType::F32, {2}));
  EXPECT_EQ(w.N, 2);
  EXPECT_EQ(w.K, 3);
  EXPECT_TRUE(w.has_bias());
  EXPECT_FALSE(FrozenWeight::make(Tensor::zeros(DType::F64, {2, 3})).has_bias());
}

TEST(Linear, ActivationTypeMustMatchWeight) {
  auto w64 = FrozenWeight::make(Tensor::zeros(DType::F64, {2, 3}));
  auto wbf = FrozenWeight::make(Tensor::zeros(DType::BF16, {2, 3}));
  std::vector<float> xf(3), yf(2);
  std::vector<double> xd(3), yd(2);
  EXPECT_THROW(linear_forward<float>(yf.data(), xf.data(), w64, 1), core::Error);
  EXPECT_THROW(linear_forward<double>(yd.data(), xd.data(), wbf, 1), core::Error);
  EXPECT_THROW(linear_backward_input<double>(xd.data(), yd.data(), wbf, 1), core::Error);
}

TEST(Linear, DoubleForwardWithBiasMatchesDefinition) {
  const int64_t M = 5, N = 4, K = 6;
  Vec W = randn(size_t(N * K), 10), b = randn(size_t(N), 11), x = randn(size_t(M * K), 12);
  auto w = FrozenWeight::make(tensor_of(W, DType::F64, {N, K}), tensor_of(b, DType::F64, {N}));
  Vec y(size_t(M * N), NAN);
  linear_forward<double>(y.data(), x.data(), w, M);
  EXPECT_LT(rel_err(y, naive_linear(x, W, &b, M, N, K)), 1e-14);
}

// L = sum(linear(x) * R): dL/dx = R W, which linear_backward_input adds into dinp.
TEST(Linear, BackwardInputGradientCheckAndAccumulates) {
  const int64_t M = 3, N = 5, K = 4;
  Vec W = randn(size_t(N * K), 13), b = randn(size_t(N), 14), x = randn(size_t(M * K), 15);
  Vec R = randn(size_t(M * N), 16);
  auto w = FrozenWeight::make(tensor_of(W, DType::F64, {N, K}), tensor_of(b, DType::F64, {N}));
  auto loss = [&] {
    Vec y(size_t(M * N));
    linear_forward<double>(y.data(), x.data(), w, M);
    return dot(y, R);
  };
  Vec num = numeric_grad(x, loss);
  Vec base = randn(size_t(M * K), 17), dx = base;
  linear_backward_input<double>(dx.data(), R.data(), w, M);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= base[i];  // (+=): what was there stays
  EXPECT_LT(rel_err(dx, num), kGradTol);
}

TEST(Linear, FloatMatchesDouble) {
  const int64_t M = 37, N = 29, K = 41;
  Vec W = float_exact(randn(size_t(N * K), 18)), b = float_exact(randn(size_t(N), 19));
  Vec x = float_exact(randn(size_t(M * K), 20)), R = float_exact(randn(size_t(M * N), 21));
  auto w64 = FrozenWeight::make(tensor_of(W, DType::F64, {N, K}), tensor_of(b, DType::F64, {N}));
  auto w32 = FrozenWeight::make(tensor_of(W, DType::F32, {N, K}), tensor_of(b, DType::F32, {N}));
  Vec y(size_t(M * N));
  std::vector<float> yf(y.size()), xf = to_float(x);
  linear_forward<double>(y.data(), x.data(), w64, M);
  linear_forward<float>(yf.data(), xf.data(), w32, M);
  EXPECT_LT(rel_err(yf, y), kFloatTol);
  Vec dx(size_t(M * K), 0.5);
  std::vector<float> dxf(dx.size(), 0.5f), Rf = to_float(R);
  linear_backward_input<double>(dx.data(), R.data(), w64, M);
  linear_backward_input<float>(dxf.data(), Rf.data(), w32, M);
  EXPECT_LT(rel_err(dxf, dx), kFloatTol);
}

// ---- BF16 ------------------------------------------------------------------------------------------

namespace {

struct Bf16Case {
  int64_t M, N, K;
  Vec W, b, x, R;
  FrozenWeight wbf, wround;  // bf16 weight; f32 weight holding the same (rounded) values
};

Bf16Case make_bf16_case(int64_t M, int64_t N, int64_t K, uint64_t seed) {
  Bf16Case c{M, N, K, randn(size_t(N * K), seed), randn(size_t(N), seed + 1), randn(size_t(M * K), seed + 2),
             randn(size_t(M * N), seed + 3), {}, {}};
  c.b = float_exact(c.b);
  c.wbf = FrozenWeight::make(tensor_of(c.W, DType::BF16, {N, K}), tensor_of(c.b, DType::F32, {N}));
  c.wround = FrozenWeight::make(tensor_of(bf16_round(c.W), DType::F32, {N, K}), tensor_of(c.b, DType::F32, {N}));
  return c;
}

// Worst-case size of sum_k x_k w_k for each output: sum_k |x_k| |w_k| (scales the bf16 error).
Vec abs_dot(const Vec& x, const Vec& W, int64_t M, int64_t N, int64_t K, bool backward) {
  Vec s(size_t(M * (backward ? K : N)), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double p = std::abs(W[n * K + k]) * std::abs(backward ? x[m * N + n] : x[m * K + k]);
        s[size_t(backward ? m * K + k : m * N + n)] += p;
      }
  return s;
}

// |got - want| <= rel * scale (+ tiny) everywhere
void expect_within(const std::vector<float>& got, const Vec& want, const Vec& scale, double rel, const char* what) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (scale[i] + 1e-30));
  EXPECT_LE(worst, rel) << what;
}

// Forward and backward of the bf16 weight vs (a) f32 linear on bf16-rounded weights and inputs:
// the same products, summed in another order -> tight; (b) the exact double result on the
// unrounded values: |error| <= 2^-8 sum|x||w| (x and w each off by <= 2^-9 relative) + fp32 sums.
void check_bf16_case(const Bf16Case& c) {
  const int64_t M = c.M, N = c.N, K = c.K;
  std::vector<float> xf = to_float(c.x), xr = to_float(bf16_round(c.x)), y(size_t(M * N)), yr(y.size());
  linear_forward<float>(y.data(), xf.data(), c.wbf, M);
  linear_forward<float>(yr.data(), xr.data(), c.wround, M);
  Vec xs = abs_dot(c.x, c.W, M, N, K, false);
  expect_within(y, to_double(yr), xs, 1e-5, "forward vs f32 on rounded values");
  Vec exact = naive_linear(c.x, c.W, &c.b, M, N, K);
  expect_within(y, exact, xs, std::ldexp(1.0, -8) + 1e-5, "forward vs exact (bf16 bound)");

  std::vector<float> Rf = to_float(c.R), Rr = to_float(bf16_round(c.R));
  std::vector<float> dx(size_t(M * K), 0.25f), dxr(dx.size(), 0.25f);
  linear_backward_input<float>(dx.data(), Rf.data(), c.wbf, M);
  linear_backward_input<float>(dxr.data(), Rr.data(), c.wround, M);
  Vec gs = abs_dot(c.R, c.W, M, N, K, true);
  for (auto& s : gs) s += 0.25;
  expect_within(dx, to_double(dxr), gs, 1e-5, "backward vs f32 on rounded values");
  Vec gexact(dx.size(), 0.25);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) gexact[m * K + k] += c.R[m * N + n] * c.W[n * K + k];
  expect_within(dx, gexact, gs, std::ldexp(1.0, -8) + 1e-5, "backward vs exact (bf16 bound)");
}

struct ForcePortable {
  explicit ForcePortable(bool on) { cpu::set_bf16_force_portable(on); }
  ~ForcePortable() { cpu::set_bf16_force_portable(false); }
};

struct SmallTiles {  // makes the portable path loop over several input blocks and weight tiles
  cpu::PortableTiling saved = cpu::portable_tiling();
  SmallTiles() { cpu::portable_tiling() = {300, 650}; }
  ~SmallTiles() { cpu::portable_tiling() = saved; }
};

}  // namespace

TEST(LinearBf16, PortablePathMatchesF32AndBound) {
  ForcePortable force(true);
  check_bf16_case(make_bf16_case(45, 70, 96, 30));
  SmallTiles tiles;
  // input blocks of 300/96 = 3 rows (fwd; 45 = 15 x 3) and 300/70 = 4 rows (bwd; 45 = 11 x 4 + 1);
  // weight tiles of 650/96 = 6 rows (fwd; 70 = 11 x 6 + 4) and 650/70 = 9 columns (bwd; 96 = 10 x 9 + 6)
  check_bf16_case(make_bf16_case(45, 70, 96, 40));
}

TEST(LinearBf16, NativePathMatchesF32AndBound) {
  if (!cpu::bf16_native_available()) GTEST_SKIP() << "oneDNN has no bf16 matmul on this CPU (portable path only)";
  check_bf16_case(make_bf16_case(45, 70, 96, 50));
}

TEST(LinearBf16, NativeAndPortableAgree) {
  if (!cpu::bf16_native_available()) GTEST_SKIP() << "oneDNN has no bf16 matmul on this CPU (portable path only)";
  auto c = make_bf16_case(64, 130, 200, 60);
  std::vector<float> x = to_float(c.x), a(size_t(c.M * c.N)), b(a.size());
  linear_forward<float>(a.data(), x.data(), c.wbf, c.M);
  {
    ForcePortable force(true);
    linear_forward<float>(b.data(), x.data(), c.wbf, c.M);
  }
  EXPECT_LT(rel_err(a, b), 1e-5);
}

// A prepacked weight gives the plain result, for the hinted M and others; where packing brings
// nothing on this CPU, prepack() says so and leaves the weight alone. The second round packs even
// a plain layout, so that the oneDNN matmul path of prepacked weights runs on every CPU (F32).
TEST(Linear, PrepackedMatchesPlain) {
  for (bool even_if_plain : {false, true}) {
  struct Restore {
    ~Restore() { cpu::set_prepack_even_if_plain(false); }
  } restore;
  cpu::set_prepack_even_if_plain(even_if_plain);
  for (DType dt : {DType::F32, DType::BF16}) {
    const int64_t N = 96, K = 128;
    Vec W = randn(size_t(N * K), 70), b = float_exact(randn(size_t(N), 71));
    auto plain = FrozenWeight::make(tensor_of(W, dt, {N, K}), tensor_of(b, DType::F32, {N}));
    auto packed = plain;
    bool did = packed.prepack(64);
    EXPECT_EQ(did, packed.packed != nullptr);
    if (even_if_plain && dt == DType::F32) {
      EXPECT_TRUE(did);
    }
    if (!did && !even_if_plain)
      std::printf("[ INFO     ] prepack(%s) is a no-op on this CPU\n", core::dtype_name(dt));
    for (int64_t M : {64, 17, 1}) {
      std::vector<float> x = to_float(randn(size_t(M * K), 72 + M)), y0(size_t(M * N)), y1(y0.size());
      linear_forward<float>(y0.data(), x.data(), plain, M);
      linear_forward<float>(y1.data(), x.data(), packed, M);
      EXPECT_LT(rel_err(y1, y0), 1e-5) << core::dtype_name(dt) << " M=" << M;
      // and the bias is in there
      std::vector<float> zero(size_t(M * K), 0.0f);
      linear_forward<float>(y1.data(), zero.data(), packed, M);
      for (int64_t n = 0; n < N; ++n) EXPECT_FLOAT_EQ(y1[size_t((M - 1) * N + n)], float(b[n]));
    }
  }
  }
}
