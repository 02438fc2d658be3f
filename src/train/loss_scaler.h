// fp16 loss scaling as DeepSpeed 0.16 does it (deepspeed-peft-spec §1.3, §2.5): the loss is multiplied by
// scale() before backward; after the step's gradients are reduced, update(overflow) is told whether any of
// them (on any rank) is inf/NaN and answers whether the optimizer step must be skipped.
//
// DynamicLossScaler::update, exactly DeepSpeed's DynamicLossScaler.update_scale (0.16.x):
//   overflow:  if hysteresis == 1 or hysteresis_left == 1:
//                 scale == min_scale -> Error "Current loss scale already at minimum - cannot decrease
//                                      scale anymore. Exiting run." (+ a fix hint)
//                 else scale = max(scale / 2, min_scale)
//              else hysteresis_left -= 1                    (the "delayed shift": scale kept)
//              last_overflow_iter = iter; the step is skipped
//   clean:     if consecutive_hysteresis: hysteresis_left = hysteresis
//              if (iter - last_overflow_iter) % window == 0:
//                 scale *= 2; if !consecutive_hysteresis: hysteresis_left = hysteresis
//   iter += 1 every call.
// So the scale first doubles after `window` clean steps from the start (iter = window - 1) or after an
// overflow; hysteresis is refilled only by a doubling (or by every clean step with consecutive_hysteresis).
// (DeepSpeed master since 2025 tests (iter - last_overflow_iter - 1) instead: one step later. 0.16 is the
// spec's reference.)
//
// A static scale (fp16.loss_scale > 0) never changes, and an overflow still skips the step, as DeepSpeed's
// ZeRO optimizers do with their own overflow check.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "train/deepspeed_config.h"

namespace zerolora::train {

// The fp16 section's scaler settings, as deepspeed_config.cpp parses them (with DeepSpeed's defaults and
// the constructor-defaults gotcha of spec §1.3 already applied): loss_scale -> static_scale,
// initial_scale_power, loss_scale_window -> scale_window, hysteresis, consecutive_hysteresis,
// min_loss_scale -> min_scale.
using LossScalerConfig = LossScaleConfig;

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(const LossScalerConfig& config = {});

  // The factor the loss is multiplied by before backward (gradients are divided by it before clipping).
  double scale() const { return scale_; }
  bool is_dynamic() const { return dynamic_; }

  // Called once per optimizer step (at the accumulation boundary) with the global overflow flag.
  // Returns true when the optimizer step must be skipped (gradients zeroed, LR schedule not stepped,
  // global_step still counted). Throws core::Error at the minimum scale (see above).
  bool update(bool overflow);

  int64_t iteration() const { return iter_; }                 // calls of update() so far
  int64_t last_overflow_iteration() const { return last_overflow_iter_; }  // -1: none yet
  int64_t hysteresis_left() const { return hysteresis_left_; }

  // Everything that a resume needs (settings included: DeepSpeed restores its pickled scaler whole, so a
  // resumed run keeps the checkpoint's scaler settings even if the JSON changed).
  nlohmann::json to_json() const;
  // Throws core::Error naming "<where>:<key>" for a missing key or a value of the wrong type / range.
  static DynamicLossScaler from_json(const nlohmann::json& j, const std::string& where);

 private:
  bool dynamic_ = true;
  double scale_ = 65536.0;
  double min_scale_ = 1.0;
  int64_t window_ = 1000;
  int64_t hysteresis_ = 2;  // DeepSpeed's delayed_shift
  bool consecutive_hysteresis_ = false;
  int64_t iter_ = 0;
  int64_t last_overflow_iter_ = -1;
  int64_t hysteresis_left_ = 2;  // DeepSpeed's cur_hysteresis
};

// True if any of the n values is inf or NaN (the fp16 overflow test on a gradient buffer; vectorised,
// threaded for large n). Reduce the answer across ranks with a MAX/OR all-reduce before update().
bool has_inf_or_nan(const float* g, int64_t n);

// x[i] = x[i] rounded through IEEE binary16 (round to nearest even; beyond the half range -> +-inf, NaN
// stays NaN), in place: emulates fp16 GEMM inputs and fp16 gradient storage on the fp32 engine.
void round_to_fp16(float* x, int64_t n);

}  // namespace zerolora::train
