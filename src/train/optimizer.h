// AdamW (torch.optim.AdamW semantics) over a slice of the flat fp32 trainable buffer, and global-norm
// gradient clipping as torch.nn.utils.clip_grad_norm_. Under ZeRO stages 1-3 each rank holds the
// optimizer state of its own slice only; the norm then needs the squared sums of every rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace zerolora::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  // Weight decay applies to the flat buffer's elements [0, decay_end) only: HF Trainer puts parameters named
  // "bias" in a group without decay, and the layout keeps the trained biases after the LoRA weights
  // (model::LoraLayout::lora_numel()). Not a DeepSpeed or HF setting of its own; the engine sets it.
  int64_t decay_end = std::numeric_limits<int64_t>::max();
};

class AdamW {
 public:
  AdamW() = default;
  AdamW(int64_t numel, AdamWConfig config) : config_(config), m_(size_t(numel), 0.f), v_(size_t(numel), 0.f) {}
  // One update of params[0, numel) with grads at learning rate lr; increments the step count. params[0] is the
  // flat buffer's element `offset` (a ZeRO shard's start), which places decay_end.
  void step(float* params, const float* grads, double lr, int64_t offset = 0);
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
// How many of the n elements from flat index offset lie before decay_end (get weight decay).
int64_t decayed_count(const AdamWConfig& c, int64_t offset, int64_t n);
void scale_in_place(float* x, int64_t n, double factor);

}  // namespace zerolora::train
