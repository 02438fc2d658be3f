#include "train/optimizer.h"

#include <algorithm>

#include "kernels/kernels.h"

namespace zerolora::train {

void AdamW::step(float* params, const float* grads, double lr, int64_t offset) {
  ++steps_;
  // elementwise: the two runs are the one-call update, but for the decay of the no-decay run
  const int64_t n = int64_t(m_.size()), d = decayed_count(config_, offset, n);
  if (d > 0)
    kernels::adamw_step(params, grads, m_.data(), v_.data(), d, lr, config_.beta1, config_.beta2, config_.eps,
                        config_.weight_decay, steps_);
  if (d < n)
    kernels::adamw_step(params + d, grads + d, m_.data() + d, v_.data() + d, n - d, lr, config_.beta1, config_.beta2,
                        config_.eps, 0.0, steps_);
}

int64_t decayed_count(const AdamWConfig& c, int64_t offset, int64_t n) {
  return std::clamp<int64_t>(c.decay_end - offset, 0, n);
}

double clip_coefficient(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  const double coef = max_norm / (total_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

void scale_in_place(float* x, int64_t n, double factor) {
  if (factor == 1.0) return;
  kernels::scale(x, n, factor, kernels::host());
}

}  // namespace zerolora::train
