#include "train/zero_engine.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "core/op_profile.h"
#include "kernels/kernels.h"
#include "train/training_checkpoint.h"
#include "train/zero3_weights.h"

namespace zerolora::train {

namespace {
// The trained biases (after the LoRA run of the flat buffer) take no weight decay, as in HF Trainer's groups.
AdamWConfig adamw_for(AdamWConfig c, const model::LoraLayout& layout) {
  c.decay_end = layout.lora_numel();
  return c;
}
}  // namespace

ZeroEngine::ZeroEngine(dist::Comm& comm, const model::LoraLayout& layout, const ZeroEngineOptions& o)
    : comm_(comm), stage_(o.stage), numel_(layout.numel()), part_(numel_, comm.size()),
      padded_(part_.padded_numel()),
      shard_(stage_ == 0 ? dist::Range{0, padded_} : part_.rank_range(comm.rank())),
      params_(size_t(padded_), 0.f), grads_(size_t(padded_), 0.f), opt_(shard_.size(), adamw_for(o.adamw, layout)),
      sync_(comm, stage_, layout, part_, o.reduce_bucket_elements, o.overlap_comm) {}

void ZeroEngine::use_device(const kernels::Context& device, bool optimizer_on_device) {
  device_ = &device;
  params_dev_ = kernels::DeviceArray<float>(padded_, device);
  grads_dev_ = kernels::DeviceArray<float>(padded_, device);
  // one rank: its shard is the whole buffer, nothing to reduce or gather, so the step needs no host
  device_optimizer_ = optimizer_on_device && comm_.size() == 1 && shard_.begin == 0 && shard_.end == padded_;
  if (device_optimizer_) {
    exp_avg_dev_ = kernels::DeviceArray<float>(padded_, device);
    exp_avg_sq_dev_ = kernels::DeviceArray<float>(padded_, device);
  }
}

void ZeroEngine::upload_params() {
  if (!device_) return;
  const size_t bytes = size_t(padded_) * sizeof(float);
  kernels::copy_to_device(params_dev_.data(), params_.data(), bytes, *device_);
  if (device_optimizer_) {
    kernels::copy_to_device(exp_avg_dev_.data(), opt_.exp_avg().data(), bytes, *device_);
    kernels::copy_to_device(exp_avg_sq_dev_.data(), opt_.exp_avg_sq().data(), bytes, *device_);
  }
}

void ZeroEngine::download_params() {
  if (device_optimizer_)
    kernels::copy_to_host(params_.data(), params_dev_.data(), size_t(padded_) * sizeof(float), *device_);
}

void ZeroEngine::begin_step() {
  if (device_) {
    kernels::fill_zero<float>(grads_dev_.data(), padded_, *device_);
    if (device_optimizer_) return;  // the host gradients are not used
  }
  std::fill(grads_.begin(), grads_.end(), 0.f);
}

void ZeroEngine::before_micro_batch(bool last) {
  if (last && !device_) sync_.begin_last_micro_batch(grads_.data());
}

void ZeroEngine::reduce_gradients() {
  if (device_optimizer_) return;  // one rank: the summed micro-batches are the gradient, on the device
  if (device_) {
    kernels::copy_to_host(grads_.data(), grads_dev_.data(), size_t(padded_) * sizeof(float), *device_);
    sync_.begin_last_micro_batch(grads_.data());
  }
  // gradients: sum over ranks (the normalisation already divided by what HF divides by)
  sync_.finish();
}

bool ZeroEngine::gradients_overflow() {
  // the gradients as fp16 would hold them: any value past half's range (or inf/nan) is an overflow
  // (--fp16 with the optimizer on the device: checked on a host copy of the gradients)
  if (device_optimizer_)
    kernels::copy_to_host(grads_.data(), grads_dev_.data(), size_t(padded_) * sizeof(float), *device_);
  int64_t overflow = 0;
  const float* g = grads_.data() + shard_.begin;
  for (int64_t i = 0; i < shard_.size() && !overflow; ++i) overflow = !(std::abs(g[i]) <= 65504.0f);
  return comm_.all_reduce(overflow, dist::ScalarOp::Max) > 0;
}

void ZeroEngine::unscale_gradients(double factor) {
  if (device_optimizer_) {
    if (factor != 1.0) kernels::scale(grads_dev_.data(), padded_, factor, *device_);
    return;
  }
  scale_in_place(grads_.data() + shard_.begin, shard_.size(), factor);
}

double ZeroEngine::grad_norm() {
  if (device_optimizer_) return std::sqrt(kernels::sum_squares(grads_dev_.data(), padded_, *device_));
  double sq = kernels::sum_squares(grads_.data() + shard_.begin, shard_.size());
  if (stage_ > 0) sq = comm_.all_reduce(sq, dist::ScalarOp::Sum);
  return std::sqrt(sq);
}

void ZeroEngine::optimizer_step(double lr, double clip_coef) {
  if (device_optimizer_) {  // the same operations as AdamW::step, as device kernels on the whole buffer
    core::OpTimer t(core::Op::Optimizer);
    if (clip_coef != 1.0) kernels::scale(grads_dev_.data(), padded_, clip_coef, *device_);
    const AdamWConfig& c = opt_.config();
    opt_.set_steps(opt_.steps() + 1);
    const int64_t d = decayed_count(c, 0, padded_);  // then the biases, without decay
    if (d > 0)
      kernels::adamw_step(params_dev_.data(), grads_dev_.data(), exp_avg_dev_.data(), exp_avg_sq_dev_.data(), d, lr,
                          c.beta1, c.beta2, c.eps, c.weight_decay, opt_.steps(), *device_);
    if (d < padded_)
      kernels::adamw_step(params_dev_.data() + d, grads_dev_.data() + d, exp_avg_dev_.data() + d,
                          exp_avg_sq_dev_.data() + d, padded_ - d, lr, c.beta1, c.beta2, c.eps, 0.0, opt_.steps(),
                          *device_);
    return;
  }
  {
    core::OpTimer t(core::Op::Optimizer);
    scale_in_place(grads_.data() + shard_.begin, shard_.size(), clip_coef);
    opt_.step(params_.data() + shard_.begin, grads_.data() + shard_.begin, lr, shard_.begin);
  }
  if (stage_ > 0 && comm_.size() > 1) {
    std::vector<float> mine(params_.begin() + shard_.begin, params_.begin() + shard_.end);
    comm_.all_gather(std::span<const float>(mine), std::span<float>(params_));
  }
  upload_params();
}

FullOptimizerState ZeroEngine::gather_state() {
  if (device_optimizer_) {  // the current state is on the device
    const size_t bytes = size_t(padded_) * sizeof(float);
    download_params();
    kernels::copy_to_host(opt_.exp_avg().data(), exp_avg_dev_.data(), bytes, *device_);
    kernels::copy_to_host(opt_.exp_avg_sq().data(), exp_avg_sq_dev_.data(), bytes, *device_);
  }
  // gather the optimizer moments (sharded under ZeRO >= 1) into full buffers
  std::vector<float> m(size_t(padded_), 0.f), v(size_t(padded_), 0.f);
  if (stage_ == 0) {
    std::copy(opt_.exp_avg().begin(), opt_.exp_avg().end(), m.begin());
    std::copy(opt_.exp_avg_sq().begin(), opt_.exp_avg_sq().end(), v.begin());
  } else {
    comm_.all_gather(std::span<const float>(opt_.exp_avg()), std::span<float>(m));
    comm_.all_gather(std::span<const float>(opt_.exp_avg_sq()), std::span<float>(v));
  }
  FullOptimizerState s;
  s.params.assign(params_.begin(), params_.begin() + numel_);
  s.exp_avg.assign(m.begin(), m.begin() + numel_);
  s.exp_avg_sq.assign(v.begin(), v.begin() + numel_);
  s.steps = opt_.steps();
  return s;
}

void ZeroEngine::load_state(const TrainingSnapshot& snap) {
  std::copy(snap.params.begin(), snap.params.end(), params_.begin());
  // world-size independent: take this rank's slice of the full moments
  for (int64_t i = shard_.begin; i < std::min(shard_.end, numel_); ++i) {
    opt_.exp_avg()[size_t(i - shard_.begin)] = snap.exp_avg[size_t(i)];
    opt_.exp_avg_sq()[size_t(i - shard_.begin)] = snap.exp_avg_sq[size_t(i)];
  }
  opt_.set_steps(snap.optimizer_steps);
}

dist::ZeroStepShape ZeroEngine::traffic_shape(int64_t gradient_accumulation_steps, const Zero3FrozenWeights* zero3) const {
  dist::ZeroStepShape shape;
  shape.stage = stage_, shape.world = comm_.size(), shape.gradient_accumulation_steps = gradient_accumulation_steps;
  shape.trainable_elements = padded_, shape.grad_bytes = 4, shape.trainable_param_bytes = 4;
  shape.grads_reduced_every_micro_step = false;
  shape.trainable_persistent_elements = padded_;
  if (zero3) {
    const auto per_use = zero3->gathered_bytes_per_use();
    shape.frozen_gathered_elements = per_use.blocks, shape.frozen_forward_only_elements = per_use.forward_only;
    shape.frozen_param_bytes = 1;  // counted in bytes already
  }
  return shape;
}

}  // namespace zerolora::train
