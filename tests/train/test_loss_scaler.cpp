// DynamicLossScaler against hand simulations of DeepSpeed's DynamicLossScaler.update_scale (spec §2.5), step
// for step; the fp16 section defaults through parse_deepspeed_config; JSON state round trip; has_inf_or_nan and
// round_to_fp16 on the IEEE half edge cases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/deepspeed_config.h"
#include "train/loss_scaler.h"

using namespace zerolora;
using namespace zerolora::train;

namespace {

LossScalerConfig dynamic_config(int64_t power, int64_t window, int64_t hysteresis, bool consecutive = false,
                                double min_scale = 1.0) {
  LossScalerConfig c;
  c.initial_scale_power = power;
  c.scale_window = window;
  c.hysteresis = hysteresis;
  c.consecutive_hysteresis = consecutive;
  c.min_scale = min_scale;
  return c;
}

// One update per entry of `overflows`; checks the skip answer, the scale and the hysteresis left after each.
void expect_sequence(DynamicLossScaler& s, const std::vector<bool>& overflows, const std::vector<double>& scales,
                     const std::vector<int64_t>& hysteresis_left) {
  ASSERT_EQ(overflows.size(), scales.size());
  ASSERT_EQ(overflows.size(), hysteresis_left.size());
  for (size_t i = 0; i < overflows.size(); ++i) {
    EXPECT_EQ(s.update(overflows[i]), overflows[i]) << "step " << i;
    EXPECT_EQ(s.scale(), scales[i]) << "step " << i;
    EXPECT_EQ(s.hysteresis_left(), hysteresis_left[i]) << "step " << i;
  }
}

std::string error_of(DynamicLossScaler& s, bool overflow) {
  try {
    s.update(overflow);
  } catch (const core::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(LossScaler, HfDefaultsHysteresisTwoDelaysTheFirstHalving) {
  DynamicLossScaler s(LossScalerConfig{});  // 2^16, window 1000, hysteresis 2, min 1
  EXPECT_TRUE(s.is_dynamic());
  EXPECT_EQ(s.scale(), 65536.0);
  // overflow 1: hysteresis 2 -> 1, scale kept; overflows 2 and 3 halve
  expect_sequence(s, {true, true, true}, {65536, 32768, 16384}, {1, 1, 1});
  EXPECT_EQ(s.last_overflow_iteration(), 2);
  // the last overflow was iteration 2: the scale doubles at iteration 1002, the 1000th clean step
  for (int i = 3; i < 1002; ++i) {
    EXPECT_FALSE(s.update(false));
    ASSERT_EQ(s.scale(), 16384.0) << "iteration " << i;
  }
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.hysteresis_left(), 2);  // refilled by the doubling
  EXPECT_EQ(s.iteration(), 1003);
}

TEST(LossScaler, WindowDoublesFromTheStart) {
  DynamicLossScaler s(dynamic_config(4, 3, 2));
  // last_overflow_iter = -1: (iter + 1) % 3 == 0 at iterations 2, 5, 8
  expect_sequence(s, {false, false, false, false, false, false, false, false, false},
                  {16, 16, 32, 32, 32, 64, 64, 64, 128}, {2, 2, 2, 2, 2, 2, 2, 2, 2});
}

TEST(LossScaler, HysteresisIsRefilledOnlyByADoubling) {
  DynamicLossScaler s(dynamic_config(10, 3, 2));
  //  iter:      0     1      2     3     4      5      6      7     8
  //  overflow:  T     F      T     T     F      F      F      T     T
  //  delayed  |1-0|%3 halve halve  |4-3| |5-3|  |6-3|%3=0 -> x2, refill; delayed; halve
  expect_sequence(s, {true, false, true, true, false, false, false, true, true},
                  {1024, 1024, 512, 256, 256, 256, 512, 512, 256}, {1, 1, 1, 1, 1, 1, 2, 1, 1});
}

TEST(LossScaler, ConsecutiveHysteresisRefillsOnEveryCleanStep) {
  DynamicLossScaler s(dynamic_config(10, 3, 2, /*consecutive=*/true));
  //  iter:      0      1        2      3      4      5      6
  //  overflow:  T      F        T      T      F      F      F
  //           delayed refill  delayed halve  refill  -    (6-3)%3=0 -> x2
  expect_sequence(s, {true, false, true, true, false, false, false}, {1024, 1024, 1024, 512, 512, 512, 1024},
                  {1, 2, 1, 1, 2, 2, 2});
}

TEST(LossScaler, HysteresisThreeNeedsThreeOverflows) {
  DynamicLossScaler s(dynamic_config(8, 1000, 3));
  expect_sequence(s, {true, true, true, true}, {256, 256, 128, 64}, {2, 1, 1, 1});
}

TEST(LossScaler, StaticScaleNeverChangesButOverflowStillSkips) {
  LossScalerConfig c;
  c.static_scale = 128;
  DynamicLossScaler s(c);
  EXPECT_FALSE(s.is_dynamic());
  for (int i = 0; i < 2500; ++i) {
    const bool overflow = i % 7 == 3;
    EXPECT_EQ(s.update(overflow), overflow);
    ASSERT_EQ(s.scale(), 128.0);
  }
  // and overflow at a static scale never aborts
  LossScalerConfig one;
  one.static_scale = 1;
  DynamicLossScaler s1(one);
  EXPECT_TRUE(s1.update(true));
  EXPECT_TRUE(s1.update(true));
  EXPECT_EQ(s1.scale(), 1.0);
}

TEST(LossScaler, AbortsWhenOverflowingAtTheMinimumScale) {
  DynamicLossScaler s(dynamic_config(2, 1000, 1));
  expect_sequence(s, {true, true}, {2, 1}, {1, 1});
  const std::string msg = error_of(s, true);
  EXPECT_NE(msg.find("Current loss scale already at minimum - cannot decrease scale anymore. Exiting run."),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("--bf16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("min_loss_scale"), std::string::npos) << msg;
  EXPECT_NE(msg.find("learning_rate"), std::string::npos) << msg;
}

TEST(LossScaler, MinScaleClampsTheHalvingBeforeAborting) {
  DynamicLossScaler s(dynamic_config(2, 1000, 1, false, /*min_scale=*/3.0));
  expect_sequence(s, {true}, {3}, {1});  // max(4 / 2, 3)
  EXPECT_FALSE(error_of(s, true).empty());
  // with hysteresis left the overflow at the minimum is first tolerated
  DynamicLossScaler h(dynamic_config(0, 1000, 2));  // scale 1 = min from the start
  expect_sequence(h, {true}, {1}, {1});
  EXPECT_FALSE(error_of(h, true).empty());
}

TEST(LossScaler, Fp16SectionDefaultsFromDeepSpeedJson) {
  // keys listed (HF templates): 2^16, hysteresis 2
  auto listed = parse_deepspeed_config(
      R"({"fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                   "hysteresis": 2, "min_loss_scale": 1}})",
      "ds.json");
  DynamicLossScaler a(listed.loss_scale);
  EXPECT_EQ(a.scale(), 65536.0);
  expect_sequence(a, {true, true}, {65536, 32768}, {1, 1});
  // only "enabled": DeepSpeed's constructor defaults, 2^32 and hysteresis 1 (spec §1.3 gotcha)
  auto bare = parse_deepspeed_config(R"({"fp16": {"enabled": true}})", "ds.json");
  DynamicLossScaler b(bare.loss_scale);
  EXPECT_EQ(b.scale(), 4294967296.0);
  expect_sequence(b, {true}, {2147483648.0}, {1});
  // a static loss_scale
  auto fixed = parse_deepspeed_config(R"({"fp16": {"enabled": true, "loss_scale": 512}})", "ds.json");
  DynamicLossScaler c(fixed.loss_scale);
  EXPECT_FALSE(c.is_dynamic());
  EXPECT_EQ(c.scale(), 512.0);
}

TEST(LossScaler, JsonRoundTripResumesIdentically) {
  DynamicLossScaler a(dynamic_config(12, 4, 2, false, 2.0));
  const std::vector<bool> before = {true, false, true, true, false, false, false, false, true};
  for (bool o : before) a.update(o);
  const nlohmann::json state = a.to_json();
  DynamicLossScaler b = DynamicLossScaler::from_json(nlohmann::json::parse(state.dump()), "checkpoint");
  EXPECT_EQ(b.to_json(), state);
  EXPECT_EQ(b.scale(), a.scale());
  EXPECT_EQ(b.iteration(), 9);
  EXPECT_EQ(b.last_overflow_iteration(), 8);
  // both continue in lockstep, including a doubling and the hysteresis
  const std::vector<bool> after = {false, false, false, false, true, true, false, true, true, true, true};
  for (size_t i = 0; i < after.size(); ++i) {
    std::string ea, eb;
    try { a.update(after[i]); } catch (const core::Error& e) { ea = e.what(); }
    try { b.update(after[i]); } catch (const core::Error& e) { eb = e.what(); }
    EXPECT_EQ(ea.empty(), eb.empty()) << i;
    EXPECT_EQ(a.to_json(), b.to_json()) << i;
  }
  // a static scaler too
  LossScalerConfig st;
  st.static_scale = 8;
  DynamicLossScaler s(st);
  DynamicLossScaler s2 = DynamicLossScaler::from_json(s.to_json(), "checkpoint");
  EXPECT_FALSE(s2.is_dynamic());
  EXPECT_EQ(s2.scale(), 8.0);
}

TEST(LossScaler, DamagedJsonStateIsRefusedNamingTheKey) {
  nlohmann::json good = DynamicLossScaler(LossScalerConfig{}).to_json();
  for (const char* key : {"cur_scale", "cur_hysteresis", "dynamic"}) {
    nlohmann::json bad = good;
    bad.erase(key);
    try {
      DynamicLossScaler::from_json(bad, "ckpt/loss_scaler");
      ADD_FAILURE() << "missing " << key << " accepted";
    } catch (const core::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("ckpt/loss_scaler:") + key), std::string::npos) << e.what();
    }
  }
  nlohmann::json bad = good;
  bad["cur_scale"] = "big";
  EXPECT_THROW(DynamicLossScaler::from_json(bad, "x"), core::Error);
  bad = good;
  bad["scale_window"] = 0;
  EXPECT_THROW(DynamicLossScaler::from_json(bad, "x"), core::Error);
}

TEST(LossScaler, RefusesInvalidSettings) {
  EXPECT_THROW(DynamicLossScaler(dynamic_config(16, 0, 2)), core::Error);
  EXPECT_THROW(DynamicLossScaler(dynamic_config(16, 10, 0)), core::Error);
  EXPECT_THROW(DynamicLossScaler(dynamic_config(16, 10, 2, false, 0.0)), core::Error);
  LossScalerConfig c;
  c.static_scale = -1;
  EXPECT_THROW(DynamicLossScaler{c}, core::Error);
}

TEST(HasInfOrNan, FindsEveryNonFiniteValueAnywhere) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> g((1 << 18) + 5, 0.5f);  // above the threading threshold, not a multiple of 8
  g[7] = std::numeric_limits<float>::max();
  g[8] = -std::numeric_limits<float>::max();
  g[9] = std::numeric_limits<float>::denorm_min();
  EXPECT_FALSE(has_inf_or_nan(g.data(), int64_t(g.size())));
  EXPECT_FALSE(has_inf_or_nan(nullptr, 0));
  for (float bad : {inf, -inf, nan, -nan}) {
    for (size_t at : {size_t(0), size_t(12345), g.size() - 1}) {
      const float saved = g[at];
      g[at] = bad;
      EXPECT_TRUE(has_inf_or_nan(g.data(), int64_t(g.size()))) << bad << " at " << at;
      g[at] = saved;
    }
    EXPECT_FALSE(has_inf_or_nan(g.data(), int64_t(g.size())));
    std::vector<float> small = {1.0f, 2.0f, bad};
    EXPECT_TRUE(has_inf_or_nan(small.data(), 3));
  }
}

TEST(RoundToFp16, MatchesIeeeHalfRoundingOverflowAndSubnormals) {
  const float inf = std::numeric_limits<float>::infinity();
  const float one_ulp = std::ldexp(1.0f, -10);  // half's spacing at 1
  // {input, expected}; placed twice: inside the 8-wide vector part and in the scalar tail
  const std::vector<std::pair<float, float>> cases = {
      {1.0f, 1.0f},
      {65504.0f, 65504.0f},                   // largest half
      {65519.0f, 65504.0f},                   // below the rounding midpoint to inf
      {65520.0f, inf},                        // the midpoint rounds to even = overflow
      {-70000.0f, -inf},
      {1.0f + one_ulp / 2, 1.0f},             // tie -> even
      {1.0f + 3 * one_ulp / 2, 1.0f + 2 * one_ulp},  // tie -> even (up)
      {1.0f + one_ulp * 0.75f, 1.0f + one_ulp},
      {std::ldexp(1.0f, -24), std::ldexp(1.0f, -24)},  // smallest subnormal half
      {std::ldexp(1.0f, -25), 0.0f},                   // tie with 0 -> 0
      {std::ldexp(1.5f, -25), std::ldexp(1.0f, -24)},
      {-0.1f, -0.0999755859375f},
      {3.14159265f, 3.140625f},
  };
  std::vector<float> x;
  for (auto& c : cases) x.push_back(c.first);
  x.push_back(std::numeric_limits<float>::quiet_NaN());
  const size_t half = x.size();
  for (size_t i = 0; i < half; ++i) x.push_back(x[i]);
  x.push_back(2.0f);  // odd length: the tail is not a multiple of 8
  round_to_fp16(x.data(), int64_t(x.size()));
  for (size_t copy = 0; copy < 2; ++copy)
    for (size_t i = 0; i < cases.size(); ++i) {
      const float got = x[copy * half + i];
      EXPECT_EQ(got, cases[i].second) << "input " << cases[i].first << " copy " << copy;
      EXPECT_EQ(std::signbit(got), std::signbit(cases[i].second)) << cases[i].first;
    }
  EXPECT_TRUE(std::isnan(x[half - 1]));
  EXPECT_TRUE(std::isnan(x[2 * half - 1]));
  EXPECT_EQ(x.back(), 2.0f);
}
