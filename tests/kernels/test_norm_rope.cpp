// embedding_forward, rmsnorm and RoPE.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "check.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;
using core::DType;
using core::Tensor;

// ---- embedding ---------------------------------------------------------------------------------------

TEST(Embedding, CopiesRowsFromEveryTableDtype) {
  const int64_t V = 11, C = 6;
  Vec table = float_exact(randn(size_t(V * C), 1));
  Tensor t64 = Tensor::empty(DType::F64, {V, C});
  std::copy(table.begin(), table.end(), t64.data<double>());
  std::vector<int32_t> ids = {3, 0, 10, 3};
  const int64_t M = int64_t(ids.size());
  for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
    Tensor t = t64.to(dt);
    Tensor back = t.to(DType::F64);  // the table's values as stored (rounded for bf16)
    std::vector<float> of(size_t(M * C));
    Vec od(size_t(M * C));
    embedding_forward<float>(of.data(), ids.data(), t, M);
    embedding_forward<double>(od.data(), ids.data(), t, M);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t c = 0; c < C; ++c) {
        double want = back.data<double>()[ids[m] * C + c];
        EXPECT_EQ(od[m * C + c], want) << core::dtype_name(dt);
        EXPECT_EQ(of[m * C + c], float(want)) << core::dtype_name(dt);
      }
  }
}

TEST(Embedding, OutOfRangeIdThrowsNamingIdAndVocab) {
  Tensor t = Tensor::zeros(DType::F32, {7, 4});
  std::vector<float> out(8);
  for (int32_t bad : {7, -1}) {
    std::vector<int32_t> ids = {1, bad};
    try {
      embedding_forward<float>(out.data(), ids.data(), t, 2);
      ADD_FAILURE() << "no throw for id " << bad;
    } catch (const core::Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("7"), std::string::npos) << msg;
    }
  }
}

// ---- RMSNorm -----------------------------------------------------------------------------------------

TEST(RmsNorm, ForwardMatchesDefinition) {
  const int64_t M = 3, C = 10;
  const double eps = 1e-5;
  Vec x = randn(size_t(M * C), 2), w = randn(size_t(C), 3);
  Vec y(x.size()), rstd(static_cast<size_t>(M));
  rmsnorm_forward<double>(y.data(), rstd.data(), x.data(), w.data(), M, C, eps);
  for (int64_t m = 0; m < M; ++m) {
    double ms = 0;
    for (int64_t c = 0; c < C; ++c) ms += x[m * C + c] * x[m * C + c] / C;
    double r = 1 / std::sqrt(ms + eps);
    EXPECT_NEAR(rstd[m], r, 1e-14 * r);
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(y[m * C + c], x[m * C + c] * r * w[c], 1e-13);
  }
}

TEST(RmsNorm, BackwardGradientCheckAndAccumulates) {
  const int64_t M = 4, C = 9;
  const double eps = 1e-6;
  Vec x = randn(size_t(M * C), 4), w = randn(size_t(C), 5), R = randn(size_t(M * C), 6);
  auto loss = [&] {
    Vec y(x.size()), rstd(static_cast<size_t>(M));
    rmsnorm_forward<double>(y.data(), rstd.data(), x.data(), w.data(), M, C, eps);
    return dot(y, R);
  };
  Vec num = numeric_grad(x, loss);
  Vec y(x.size()), rstd(static_cast<size_t>(M));
  rmsnorm_forward<double>(y.data(), rstd.data(), x.data(), w.data(), M, C, eps);
  Vec base = randn(x.size(), 7), dx = base;
  rmsnorm_backward<double>(dx.data(), R.data(), x.data(), w.data(), rstd.data(), M, C);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= base[i];
  EXPECT_LT(rel_err(dx, num), kGradTol);
}

TEST(RmsNorm, FloatMatchesDouble) {
  const int64_t M = 16, C = 300;
  Vec x = float_exact(randn(size_t(M * C), 8)), w = float_exact(randn(size_t(C), 9));
  Vec R = float_exact(randn(size_t(M * C), 10));
  Vec y(x.size()), rstd(static_cast<size_t>(M)), dx(x.size(), 0.0);
  rmsnorm_forward<double>(y.data(), rstd.data(), x.data(), w.data(), M, C, 1e-5);
  rmsnorm_backward<double>(dx.data(), R.data(), x.data(), w.data(), rstd.data(), M, C);
  auto xf = to_float(x), wf = to_float(w), Rf = to_float(R);
  std::vector<float> yf(x.size()), rf(static_cast<size_t>(M)), dxf(x.size(), 0.0f);
  rmsnorm_forward<float>(yf.data(), rf.data(), xf.data(), wf.data(), M, C, 1e-5);
  rmsnorm_backward<float>(dxf.data(), Rf.data(), xf.data(), wf.data(), rf.data(), M, C);
  EXPECT_LT(rel_err(yf, y), kFloatTol);
  EXPECT_LT(rel_err(rf, rstd), kFloatTol);
  EXPECT_LT(rel_err(dxf, dx), kFloatTol);
}

// ---- RoPE --------------------------------------------------------------------------------------------

namespace {

std::vector<double> inv_freq(int64_t HD, double theta) {
  std::vector<double> f(size_t(HD / 2));
  for (int64_t i = 0; i < HD / 2; ++i) f[i] = std::pow(theta, -2.0 * double(i) / double(HD));
  return f;
}

}  // namespace

TEST(Rope, TableHoldsCosSinOfPositionTimesFrequency) {
  const int64_t HD = 8, P = 5;
  auto f = inv_freq(HD, 10000.0);
  Vec cs(size_t(P * HD));
  rope_table<double>(cs.data(), f.data(), P, HD);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < HD / 2; ++i) {
      EXPECT_NEAR(cs[(p * HD / 2 + i) * 2], std::cos(p * f[i]), 1e-15);
      EXPECT_NEAR(cs[(p * HD / 2 + i) * 2 + 1], std::sin(p * f[i]), 1e-15);
    }
  // float: HF's fp32 angle, cos/sin to ~1 ulp
  std::vector<float> csf(cs.size());
  rope_table<float>(csf.data(), f.data(), P, HD);
  EXPECT_LT(rel_err(csf, cs), 1e-6);
}

// HD = 4: pairs (0,2) and (1,3). inv_freq = {1, 0.5}; position 1 -> angles {1, 0.5}.
//   x = (1, 2, 3, 4): x'0 = 1 cos1 - 3 sin1, x'2 = 3 cos1 + 1 sin1,
//                     x'1 = 2 cos.5 - 4 sin.5, x'3 = 4 cos.5 + 2 sin.5
TEST(Rope, RotateHalfPairingByHand) {
  const int64_t HD = 4;
  std::vector<double> f = {1.0, 0.5};
  Vec cs(size_t(3 * HD));
  rope_table<double>(cs.data(), f.data(), 3, HD);
  Vec x = {1, 2, 3, 4};
  std::vector<int32_t> pos = {1};
  rope_forward<double>(x.data(), cs.data(), pos.data(), 1, 1, HD);
  const double c1 = std::cos(1.0), s1 = std::sin(1.0), ch = std::cos(0.5), sh = std::sin(0.5);
  EXPECT_NEAR(x[0], 1 * c1 - 3 * s1, 1e-15);
  EXPECT_NEAR(x[1], 2 * ch - 4 * sh, 1e-15);
  EXPECT_NEAR(x[2], 3 * c1 + 1 * s1, 1e-15);
  EXPECT_NEAR(x[3], 4 * ch + 2 * sh, 1e-15);
  // position 0 is the identity
  Vec y = {1, 2, 3, 4};
  pos = {0};
  rope_forward<double>(y.data(), cs.data(), pos.data(), 1, 1, HD);
  EXPECT_EQ(y, (Vec{1, 2, 3, 4}));
}

TEST(Rope, OddHeadDimThrows) {
  Vec x(6), cs(6);
  std::vector<int32_t> pos = {0};
  std::vector<double> f = {1.0};
  EXPECT_THROW(rope_forward<double>(x.data(), cs.data(), pos.data(), 1, 2, 3), core::Error);
  EXPECT_THROW(rope_table<double>(cs.data(), f.data(), 1, 3), core::Error);
}

TEST(Rope, BackwardUndoesForward) {
  const int64_t M = 6, H = 3, HD = 16, P = 50;
  auto f = inv_freq(HD, 10000.0);
  Vec cs(size_t(P * HD));
  rope_table<double>(cs.data(), f.data(), P, HD);
  std::vector<int32_t> pos = {0, 1, 2, 49, 7, 7};
  Vec x0 = randn(size_t(M * H * HD), 11), x = x0;
  rope_forward<double>(x.data(), cs.data(), pos.data(), M, H, HD);
  EXPECT_GT(rel_err(x, x0), 0.1);  // it did rotate
  rope_backward<double>(x.data(), cs.data(), pos.data(), M, H, HD);
  EXPECT_LT(rel_err(x, x0), 1e-15);
}

TEST(Rope, BackwardGradientCheck) {
  const int64_t M = 4, H = 2, HD = 8, P = 20;
  auto f = inv_freq(HD, 500000.0);
  Vec cs(size_t(P * HD));
  rope_table<double>(cs.data(), f.data(), P, HD);
  std::vector<int32_t> pos = {3, 19, 0, 11};
  Vec x = randn(size_t(M * H * HD), 12), R = randn(x.size(), 13);
  auto loss = [&] {
    Vec y = x;
    rope_forward<double>(y.data(), cs.data(), pos.data(), M, H, HD);
    return dot(y, R);
  };
  Vec num = numeric_grad(x, loss);
  Vec g = R;
  rope_backward<double>(g.data(), cs.data(), pos.data(), M, H, HD);
  EXPECT_LT(rel_err(g, num), kGradTol);
}

TEST(Rope, FloatMatchesDouble) {
  const int64_t M = 10, H = 4, HD = 64, P = 2048;
  auto f = inv_freq(HD, 10000.0);
  Vec cs(size_t(P * HD));
  std::vector<float> csf(cs.size());
  rope_table<double>(cs.data(), f.data(), P, HD);
  rope_table<float>(csf.data(), f.data(), P, HD);
  std::vector<int32_t> pos = {0, 1, 2, 100, 500, 1000, 1500, 2000, 2046, 2047};
  Vec x = float_exact(randn(size_t(M * H * HD), 14));
  auto xf = to_float(x);
  rope_forward<double>(x.data(), cs.data(), pos.data(), M, H, HD);
  rope_forward<float>(xf.data(), csf.data(), pos.data(), M, H, HD);
  // the float table uses HF's fp32 angle p * inv_freq (off by up to ~2047 * 2^-24 rad): looser
  EXPECT_LT(rel_err(xf, x), 5e-4);
  rope_backward<double>(x.data(), cs.data(), pos.data(), M, H, HD);
  rope_backward<float>(xf.data(), csf.data(), pos.data(), M, H, HD);
  EXPECT_LT(rel_err(xf, x), 5e-4);
  // at small positions the fp32 angle is exact enough for the usual float tolerance
  Vec y = float_exact(randn(size_t(3 * H * HD), 15));
  auto yf = to_float(y);
  rope_forward<double>(y.data(), cs.data(), pos.data(), 3, H, HD);
  rope_forward<float>(yf.data(), csf.data(), pos.data(), 3, H, HD);
  EXPECT_LT(rel_err(yf, y), kFloatTol);
}
