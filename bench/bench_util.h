// Helpers shared by the benchmark programs (header-only: each bench_<name> is one translation unit).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "model/weights.h"

namespace zerolora::bench {

// Random weights, fast: uniform with std 0.02 from a counter hash (values do not matter for timing, only
// that they are finite and of realistic size), written straight in the wanted dtype and threaded, so a
// 1.1B model takes seconds and no f64 staging copy inflates the peak RSS.
inline model::TensorSource fast_random_source() {
  return [](const std::string& name, core::DType dtype, const core::Shape& shape) {
    uint64_t seed = 1469598103934665603ull;
    for (char ch : name) seed = (seed ^ uint8_t(ch)) * 1099511628211ull;
    const bool ones = name.find("norm.weight") != std::string::npos;
    core::Tensor t = core::Tensor::empty(dtype, shape);
    const int64_t n = t.numel();
    const float half_width = 0.02f * std::sqrt(3.0f);
    auto value = [&](int64_t i) -> float {
      if (ones) return 1.0f;
      uint64_t z = seed + uint64_t(i) * 0x9e3779b97f4a7c15ull;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      return half_width * (float(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
    };
    if (dtype == core::DType::BF16) {
      uint16_t* p = t.bits16();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) p[i] = core::f32_to_bf16(value(i));
    } else if (dtype == core::DType::F32) {
      float* p = t.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) p[i] = value(i);
    } else {
      throw core::Error("bench", "unsupported dtype for the random source", "use bf16 or f32");
    }
    return t;
  };
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace zerolora::bench
