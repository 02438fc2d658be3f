// SwiGLU, cross-entropy, AdamW and sum_squares.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "check.h"
#include "core/error.h"
#include "kernels/cpu/common.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

// ---- the vectorisable exp behind the float kernels ----------------------------------------------------

TEST(ExpFast, WithinFourUlpAndEdgeCases) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.0137) {
    const float xf = float(x);
    const double want = std::exp(double(xf));
    worst = std::max(worst, std::abs(cpu::exp_fast(xf) - want) / want);
  }
  EXPECT_LT(worst, 4 * 6e-8);  // ~4 ulp
  EXPECT_EQ(cpu::exp_fast(0.0f), 1.0f);
  EXPECT_EQ(cpu::exp_fast(-INFINITY), 0.0f);
  EXPECT_EQ(cpu::exp_fast(-1000.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(cpu::exp_fast(1000.0f)));
  EXPECT_GT(cpu::exp_fast(INFINITY), 1e38f);
  EXPECT_TRUE(std::isnan(cpu::exp_fast(NAN)));
  EXPECT_EQ(cpu::select(true, 1.5f, 2.5f), 1.5f);
  EXPECT_EQ(cpu::select(false, 1.5, 2.5), 2.5);
}

// ---- SwiGLU -----------------------------------------------------------------------------------------

TEST(SwiGlu, ForwardMatchesDefinition) {
  Vec g = {-30.0, -2.0, 0.0, 0.5, 3.0, 40.0}, u = {1.5, -1.0, 2.0, 3.0, 0.25, -1.0}, y(6);
  swiglu_forward<double>(y.data(), g.data(), u.data(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(y[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-15);
  std::vector<float> gf = to_float(g), uf = to_float(u), yf(6);
  swiglu_forward<float>(yf.data(), gf.data(), uf.data(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(yf[i], y[i], 1e-6 * std::abs(y[i]) + 1e-30) << g[i];
}

TEST(SwiGlu, BackwardGradientCheck) {
  const int64_t n = 40;
  Vec g = randn(n, 1, 3.0), u = randn(n, 2), R = randn(n, 3);
  auto loss = [&] {
    Vec y(n);
    swiglu_forward<double>(y.data(), g.data(), u.data(), n);
    return dot(y, R);
  };
  Vec dg(n, NAN), du(n, NAN);  // overwritten
  swiglu_backward<double>(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
  EXPECT_LT(rel_err(dg, numeric_grad(g, loss)), kGradTol);
  EXPECT_LT(rel_err(du, numeric_grad(u, loss)), kGradTol);
}

TEST(SwiGlu, FloatMatchesDouble) {
  const int64_t n = 100000;  // long enough for the threaded, vectorised path
  Vec g = float_exact(randn(n, 4, 4.0)), u = float_exact(randn(n, 5)), R = float_exact(randn(n, 6));
  Vec y(n), dg(n), du(n);
  swiglu_forward<double>(y.data(), g.data(), u.data(), n);
  swiglu_backward<double>(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
  auto gf = to_float(g), uf = to_float(u), Rf = to_float(R);
  std::vector<float> yf(n), dgf(n), duf(n);
  swiglu_forward<float>(yf.data(), gf.data(), uf.data(), n);
  swiglu_backward<float>(dgf.data(), duf.data(), Rf.data(), gf.data(), uf.data(), n);
  EXPECT_LT(rel_err(yf, y), kFloatTol);
  EXPECT_LT(rel_err(dgf, dg), kFloatTol);
  EXPECT_LT(rel_err(duf, du), kFloatTol);
}

// The model's backward writes d gate and d up over gate and up (block.cpp): in place, the same bits.
TEST(SwiGlu, BackwardInPlaceEqualsOutOfPlace) {
  const int64_t n = 100003;  // the threaded, vectorised path and a tail
  const Vec g = randn(n, 7, 4.0), u = randn(n, 8), R = randn(n, 9);
  Vec dg(n), du(n), g2 = g, u2 = u;
  swiglu_backward<double>(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
  swiglu_backward<double>(g2.data(), u2.data(), R.data(), g2.data(), u2.data(), n);
  EXPECT_EQ(g2, dg);
  EXPECT_EQ(u2, du);
  auto gf = to_float(g), uf = to_float(u), Rf = to_float(R);
  std::vector<float> dgf(n), duf(n);
  swiglu_backward<float>(dgf.data(), duf.data(), Rf.data(), gf.data(), uf.data(), n);
  swiglu_backward<float>(gf.data(), uf.data(), Rf.data(), gf.data(), uf.data(), n);
  EXPECT_EQ(gf, dgf);
  EXPECT_EQ(uf, duf);
}

// ---- cross-entropy ------------------------------------------------------------------------------------

namespace {

// -log softmax(x)[t] straight from the definition (no max subtraction: inputs kept moderate)
double naive_ce(const Vec& x, const std::vector<int32_t>& targets, int64_t V) {
  double loss = 0;
  for (size_t m = 0; m < targets.size(); ++m) {
    if (targets[m] == -100) continue;
    double z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(x[m * V + j]);
    loss += -(x[m * V + targets[m]] - std::log(z));
  }
  return loss;
}

}  // namespace

TEST(CrossEntropy, LossMatchesNaiveLogSoftmax) {
  const int64_t V = 13;
  std::vector<int32_t> t = {3, -100, 0, 12, -100, 7};
  const int64_t M = int64_t(t.size());
  Vec x = randn(size_t(M * V), 7, 2.0);
  int64_t count = -1;
  Vec work = x;
  double loss = cross_entropy_forward_backward<double>(work.data(), t.data(), M, V, 0.0, &count);
  EXPECT_NEAR(loss, naive_ce(x, t, V), 1e-12);
  EXPECT_EQ(count, 4);
  EXPECT_EQ(work, x);  // grad_scale 0: logits untouched
  std::vector<float> xf = to_float(x);
  double lf = cross_entropy_forward_backward<float>(xf.data(), t.data(), M, V, 0.0, &count);
  EXPECT_NEAR(lf, loss, 1e-5 * std::abs(loss));
}

TEST(CrossEntropy, StableForHugeLogits) {
  const int64_t V = 4;
  Vec x = {1000.0, 999.0, -1000.0, 998.0};
  std::vector<int32_t> t = {1};
  int64_t count;
  std::vector<float> xf = to_float(x);
  double loss = cross_entropy_forward_backward<float>(xf.data(), t.data(), 1, V, 1.0, &count);
  const double want = std::log(std::exp(1.0) + 1 + std::exp(-1.0));  // lse - x_t, logits shifted by -999
  EXPECT_NEAR(loss, want, 1e-6);
  for (float g : xf) EXPECT_TRUE(std::isfinite(g));
}

// d(grad_scale * loss)/d(logits) by central differences; ignored rows get a zero gradient.
TEST(CrossEntropy, GradientCheckWithIgnoredRows) {
  const int64_t V = 11;
  std::vector<int32_t> t = {2, -100, 10, 0, -100};
  const int64_t M = int64_t(t.size());
  const double scale = 0.37;
  Vec x = randn(size_t(M * V), 8, 3.0);
  auto loss = [&] {
    Vec w = x;
    return scale * cross_entropy_forward_backward<double>(w.data(), t.data(), M, V, 0.0, nullptr);
  };
  Vec num = numeric_grad(x, loss);
  Vec g = x;
  int64_t count;
  cross_entropy_forward_backward<double>(g.data(), t.data(), M, V, scale, &count);
  EXPECT_LT(rel_err(g, num), kGradTol);
  for (int64_t j = 0; j < V; ++j) {
    EXPECT_EQ(g[1 * V + j], 0.0);
    EXPECT_EQ(g[4 * V + j], 0.0);
  }
}

TEST(CrossEntropy, FloatMatchesDouble) {
  const int64_t M = 8, V = 32000;
  std::vector<int32_t> t = {0, 31999, 5, -100, 17, 23456, 9, 100};
  Vec x = float_exact(randn(size_t(M * V), 9, 3.0));
  std::vector<float> xf = to_float(x);
  int64_t c1, c2;
  double l = cross_entropy_forward_backward<double>(x.data(), t.data(), M, V, 1.0 / 7, &c1);
  double lf = cross_entropy_forward_backward<float>(xf.data(), t.data(), M, V, 1.0 / 7, &c2);
  EXPECT_EQ(c1, 7);
  EXPECT_EQ(c2, 7);
  EXPECT_NEAR(lf, l, 1e-6 * std::abs(l));
  EXPECT_LT(rel_err(xf, x), kFloatTol);
}

TEST(CrossEntropy, OutOfRangeTargetThrows) {
  Vec x(6, 0.0);
  for (int32_t bad : {3, -1, -99}) {
    std::vector<int32_t> t = {0, bad};
    try {
      cross_entropy_forward_backward<double>(x.data(), t.data(), 2, 3, 1.0, nullptr);
      ADD_FAILURE() << "no throw for target " << bad;
    } catch (const core::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

// ---- AdamW ---------------------------------------------------------------------------------------------

// The update written out per the header (and torch.optim.AdamW's docs), in double.
TEST(AdamW, ThreeStepsMatchScalarFormula) {
  const int64_t n = 1000;
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  Vec p0 = float_exact(randn(n, 10)), p = p0, m(n, 0.0), v(n, 0.0);
  std::vector<float> pf = to_float(p0), mf(n, 0.0f), vf(n, 0.0f);
  for (int64_t step = 1; step <= 3; ++step) {
    Vec g = float_exact(randn(n, 20 + step, 0.01 * step));
    std::vector<float> gf = to_float(g);
    adamw_step(pf.data(), gf.data(), mf.data(), vf.data(), n, lr, b1, b2, eps, wd, step);
    for (int64_t i = 0; i < n; ++i) {
      p[i] -= lr * wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      p[i] -= lr / (1 - std::pow(b1, step)) * m[i] / (std::sqrt(v[i]) / std::sqrt(1 - std::pow(b2, step)) + eps);
    }
  }
  EXPECT_LT(rel_err(pf, p), 1e-6);
  EXPECT_LT(rel_err(mf, m), 1e-6);
  EXPECT_LT(rel_err(vf, v), 1e-6);
  // the parameters moved by about lr per step (Adam's normalised step), not by rounding noise
  Vec moved(n);
  for (int64_t i = 0; i < n; ++i) moved[i] = p[i] - p0[i];
  EXPECT_GT(rel_err(moved, Vec(n, 0.0)), 0.0);
}

// torch.optim.AdamW docs: theta_t = theta_{t-1} - lr*wd*theta_{t-1}; m_hat = m_t/(1-b1^t);
// v_hat = v_t/(1-b2^t); theta_t -= lr m_hat/(sqrt(v_hat)+eps). With a constant gradient g,
// m_t = (1-b1^t) g and v_t = (1-b2^t) g^2, so every step is theta <- c theta - u with c = 1 - lr wd
// and u = lr g/(|g| + eps):  theta_3 = c^3 theta_0 - u (c^2 + c + 1).
TEST(AdamW, ConstantGradientClosedForm) {
  const double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-6, wd = 0.05;
  Vec g = {0.5, -2.0, 1e-3, -1e-5, 3.0};
  Vec p0 = {1.0, -1.0, 0.25, 2.0, 0.0};
  const int64_t n = int64_t(g.size());
  std::vector<float> pf = to_float(p0), gf = to_float(g), mf(n, 0.0f), vf(n, 0.0f);
  for (int64_t step = 1; step <= 3; ++step)
    adamw_step(pf.data(), gf.data(), mf.data(), vf.data(), n, lr, b1, b2, eps, wd, step);
  const double c = 1 - lr * wd;
  for (int64_t i = 0; i < n; ++i) {
    const double u = lr * g[i] / (std::abs(g[i]) + eps);
    EXPECT_NEAR(pf[i], c * c * c * p0[i] - u * (c * c + c + 1), 2e-6) << i;
  }
}

TEST(SumSquares, MatchesDefinition) {
  EXPECT_EQ(sum_squares(nullptr, 0), 0.0);
  std::vector<float> x = {1.0f, -2.0f, 3.0f};
  EXPECT_EQ(sum_squares(x.data(), 3), 14.0);
  const int64_t n = 300001;  // several chunks
  Vec r = float_exact(randn(n, 30));
  auto rf = to_float(r);
  double want = 0;
  for (double v : r) want += v * v;
  EXPECT_NEAR(sum_squares(rf.data(), n), want, 1e-12 * want);
}
