#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"

using namespace zerolora::core;

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + 1.0f / 256), f32_to_bf16(1.0f));
  // slightly above halfway rounds up
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256 + 1.0f / 4096)), 1.0f + 1.0f / 128);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(INFINITY)), INFINITY);
  EXPECT_EQ(f32_to_bf16(-2.5f), 0xC020);
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);  // overflow -> inf
}

TEST(DType, BulkConversionMatchesScalar) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 3);
  const size_t n = 200003;  // several threaded chunks plus a ragged tail
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint16_t> b(n), h(n);
  convert(x.data(), DType::F32, b.data(), DType::BF16, n);
  convert(x.data(), DType::F32, h.data(), DType::F16, n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(b[i], f32_to_bf16(x[i])) << i;
    ASSERT_EQ(h[i], f32_to_f16(x[i])) << i;
  }
  std::vector<float> back(n);
  convert(b.data(), DType::BF16, back.data(), DType::F32, n);
  for (size_t i = 0; i < n; ++i)
    if (i != 5) { ASSERT_EQ(back[i], bf16_to_f32(b[i])); }
  std::vector<double> d(n);
  convert(x.data(), DType::F32, d.data(), DType::F64, n);
  EXPECT_EQ(d[17], double(x[17]));
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::zeros(DType::F32, {4, 3});
  Tensor r = t.rows(1, 3);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  r.data<float>()[0] = 7;
  EXPECT_EQ(t.data<float>()[3], 7);
  Tensor flat = t.reshape({12});
  EXPECT_EQ(flat.data<float>()[3], 7);
  EXPECT_THROW(t.reshape({5}), Error);
  EXPECT_THROW(t.data<double>(), Error);
  Tensor c = t.to(DType::BF16);
  EXPECT_EQ(bf16_to_f32(c.bits16()[3]), 7.0f);
}

TEST(Error, OneLineWithFix) {
  Error e("config.json:hidden_size", "must be positive, got -1\n", "set it to the model's width");
  std::string m = e.what();
  EXPECT_EQ(m.find('\n'), std::string::npos);
  EXPECT_NE(m.find("config.json:hidden_size"), std::string::npos);
  EXPECT_NE(m.find("fix: set it"), std::string::npos);
}
