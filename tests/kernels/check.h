// Helpers of the kernel tests: random buffers, error measures and central-difference gradients.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace zerolora::kernels::test {

using Vec = std::vector<double>;

inline Vec randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline Vec uniform(size_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Values exactly representable in float, so float and double kernels see the same inputs.
inline Vec float_exact(Vec v) {
  for (auto& x : v) x = double(float(x));
  return v;
}

inline std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
template <typename T>
inline Vec to_double(const std::vector<T>& v) {
  return Vec(v.begin(), v.end());
}

// max |a - b| / max(max|a|, max|b|): an error relative to the scale of the whole buffer.
template <typename A, typename B>
double rel_err(const std::vector<A>& a, const std::vector<B>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max({scale, std::abs(double(a[i])), std::abs(double(b[i]))});
  }
  return scale == 0 ? diff : diff / scale;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences dL/dx_i of a scalar function of x (x is perturbed and restored in place).
// `indices` restricts the check to some coordinates (empty = all); the others are left 0.
inline Vec numeric_grad(Vec& x, const std::function<double()>& loss, double h = 1e-6,
                        const std::vector<size_t>& indices = {}) {
  Vec g(x.size(), 0.0);
  auto one = [&](size_t i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  };
  if (indices.empty())
    for (size_t i = 0; i < x.size(); ++i) one(i);
  else
    for (size_t i : indices) one(i);
  return g;
}

// A random subset of k indices of [0, n) (all of them when k >= n).
inline std::vector<size_t> some_indices(size_t n, size_t k, uint64_t seed) {
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = i;
  if (k >= n) return idx;
  std::mt19937_64 rng(seed);
  std::shuffle(idx.begin(), idx.end(), rng);
  idx.resize(k);
  return idx;
}

// Keeps only `indices` of g (for comparing an analytic gradient with a partial numeric one).
inline Vec masked(const Vec& g, const std::vector<size_t>& indices) {
  Vec out(g.size(), 0.0);
  for (size_t i : indices) out[i] = g[i];
  return out;
}

// Gradient-check tolerance (double precision, h = 1e-6).
constexpr double kGradTol = 1e-7;
// float kernel vs the same kernel in double.
constexpr double kFloatTol = 1e-5;

}  // namespace zerolora::kernels::test
