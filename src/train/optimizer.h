// AdamW (torch.optim.AdamW semantics) over a slice of the flat fp32 trainable buffer, and global-norm
// gradient clipping as torch.nn.utils.clip_grad_norm_. Under ZeRO stages 1-3 each rank holds the
// optimizer state of its own slice only; the norm then needs the squared sums of every rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace zerolora::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  AdamW() = default;
  AdamW(int64_t numel, AdamWConfig config) : config_(config), m_(size_t(numel), 0.f), v_(size_t(numel), 0.f) {}
  // One update of params[0, numel) with grads at learning rate lr; increments the step count.
  void step(float* params, const float* grads, double lr);
  int64_t steps() const { return steps_; }
  void set_steps(int64_t s) { steps_ = s; }
  std::vector<float>& exp_avg() { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }
  const std::vector<float>& exp_avg() const { return m_; }
  const std::vector<float>& exp_avg_sq() const { return v_; }
  const AdamWConfig& config() const { return config_; }

 private:
  AdamWConfig config_;
  std::vector<float> m_, v_;
  int64_t steps_ = 0;
};

// torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6), applied when < 1.
// total_norm is computed by the caller (it may span ranks); returns the coefficient used (1 = none).
double clip_coefficient(double total_norm, double max_norm);
void scale_in_place(float* x, int64_t n, double factor);

}  // namespace zerolora::train
