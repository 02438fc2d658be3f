// DeepSpeed's fp16 loss scaler (see loss_scaler.h for the algorithm) and the fp16 helpers around it.
#include "train/loss_scaler.h"

#include <immintrin.h>

#include <bit>
#include <cmath>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace zerolora::train {

DynamicLossScaler::DynamicLossScaler(const LossScalerConfig& config) {
  const char* where = "fp16 loss scaler";
  core::check(config.static_scale >= 0 && std::isfinite(config.static_scale), where,
              "fp16.loss_scale must be 0 (dynamic) or a positive finite scale");
  dynamic_ = config.static_scale == 0;
  if (!dynamic_) {
    scale_ = config.static_scale;
    return;
  }
  core::check(config.initial_scale_power >= 0 && config.initial_scale_power <= 64, where,
              "fp16.initial_scale_power " + std::to_string(config.initial_scale_power) + " is outside [0, 64]");
  core::check(config.scale_window >= 1, where, "fp16.loss_scale_window must be >= 1");
  core::check(config.hysteresis >= 1, where, "fp16.hysteresis must be >= 1");
  core::check(config.min_scale > 0 && std::isfinite(config.min_scale), where, "fp16.min_loss_scale must be > 0");
  scale_ = std::ldexp(1.0, int(config.initial_scale_power));
  min_scale_ = config.min_scale;
  window_ = config.scale_window;
  hysteresis_ = config.hysteresis;
  consecutive_hysteresis_ = config.consecutive_hysteresis;
  hysteresis_left_ = hysteresis_;
}

bool DynamicLossScaler::update(bool overflow) {
  if (!dynamic_) {
    ++iter_;
    return overflow;
  }
  if (overflow) {
    if (hysteresis_ == 1 || hysteresis_left_ == 1) {
      if (scale_ == min_scale_)
        throw core::Error("fp16 loss scaling",
                          "Current loss scale already at minimum - cannot decrease scale anymore. Exiting run. "
                          "(gradients overflowed at loss scale " + std::to_string(scale_) + " = min_loss_scale)",
                          "train with --bf16 True instead of fp16 (no overflow, no loss scaling), or lower "
                          "--learning_rate, or raise fp16.min_loss_scale in the DeepSpeed JSON");
      scale_ = std::max(scale_ / 2.0, min_scale_);
    } else {
      --hysteresis_left_;
    }
    last_overflow_iter_ = iter_;
  } else {
    if (consecutive_hysteresis_) hysteresis_left_ = hysteresis_;
    if ((iter_ - last_overflow_iter_) % window_ == 0) {
      if (!consecutive_hysteresis_) hysteresis_left_ = hysteresis_;
      scale_ *= 2.0;
    }
  }
  ++iter_;
  return overflow;
}

nlohmann::json DynamicLossScaler::to_json() const {
  return {{"dynamic", dynamic_},
          {"cur_scale", scale_},
          {"min_scale", min_scale_},
          {"scale_window", window_},
          {"delayed_shift", hysteresis_},
          {"consecutive_hysteresis", consecutive_hysteresis_},
          {"cur_iter", iter_},
          {"last_overflow_iter", last_overflow_iter_},
          {"cur_hysteresis", hysteresis_left_}};
}

DynamicLossScaler DynamicLossScaler::from_json(const nlohmann::json& j, const std::string& where) {
  core::check(j.is_object(), where, "loss scaler state is not a JSON object", "the checkpoint is damaged");
  auto field = [&](const char* key) -> const nlohmann::json& {
    core::check(j.contains(key), where + ":" + key, "missing from the loss scaler state",
                "the checkpoint is damaged or was not written by zerolora");
    return j.at(key);
  };
  auto integer = [&](const char* key, int64_t lo) {
    const auto& v = field(key);
    core::check(v.is_number_integer() && v.get<int64_t>() >= lo, where + ":" + key,
                "expected an integer >= " + std::to_string(lo) + ", got " + v.dump());
    return v.get<int64_t>();
  };
  auto positive = [&](const char* key) {
    const auto& v = field(key);
    core::check(v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()), where + ":" + key,
                "expected a positive number, got " + v.dump());
    return v.get<double>();
  };
  auto boolean = [&](const char* key) {
    const auto& v = field(key);
    core::check(v.is_boolean(), where + ":" + key, "expected true or false, got " + v.dump());
    return v.get<bool>();
  };
  DynamicLossScaler s;
  s.dynamic_ = boolean("dynamic");
  s.scale_ = positive("cur_scale");
  s.min_scale_ = positive("min_scale");
  s.window_ = integer("scale_window", 1);
  s.hysteresis_ = integer("delayed_shift", 1);
  s.consecutive_hysteresis_ = boolean("consecutive_hysteresis");
  s.iter_ = integer("cur_iter", 0);
  s.last_overflow_iter_ = integer("last_overflow_iter", -1);
  s.hysteresis_left_ = integer("cur_hysteresis", 0);
  core::check(s.last_overflow_iter_ < s.iter_, where + ":last_overflow_iter",
              "is not before cur_iter " + std::to_string(s.iter_), "the checkpoint is damaged");
  return s;
}

bool has_inf_or_nan(const float* g, int64_t n) {
  // exponent bits all ones <=> inf or NaN; an integer test, so it vectorises and ignores -ffast-math
  uint32_t found = 0;
#pragma omp parallel for simd schedule(static) reduction(| : found) if (n > (int64_t(1) << 18))
  for (int64_t i = 0; i < n; ++i) found |= uint32_t((std::bit_cast<uint32_t>(g[i]) & 0x7f800000u) == 0x7f800000u);
  return found != 0;
}

void round_to_fp16(float* x, int64_t n) {
  int64_t vec_end = 0;
#if defined(__F16C__)
  vec_end = n - n % 8;
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 18))
  for (int64_t i = 0; i < vec_end; i += 8) {
    // F16C: round to nearest even, overflow to inf, subnormal halves kept, NaN quiet
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
  }
#endif
  for (int64_t i = vec_end; i < n; ++i) x[i] = core::f16_to_f32(core::f32_to_f16(x[i]));
}

}  // namespace zerolora::train
