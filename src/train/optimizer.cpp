#include "train/optimizer.h"

#include "kernels/kernels.h"

namespace zerolora::train {

void AdamW::step(float* params, const float* grads, double lr) {
  ++steps_;
  kernels::adamw_step(params, grads, m_.data(), v_.data(), int64_t(m_.size()), lr, config_.beta1, config_.beta2,
                      config_.eps, config_.weight_decay, steps_);
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
