// The trainable state of a LoRA run and every ZeRO-stage decision about it (deepspeed-peft-spec §2): the
// flat fp32 params and grads (padded to a multiple of the world size), the Adam moments of this rank's shard,
// the FlatPartition, the gradient sum over ranks (GradientSync), the global grad norm, the optimizer step,
// the parameter all-gather after it, the ZeRO traffic model's shape, and the full state for checkpoints.
//   stage 0      every rank holds and updates the whole buffer (moments of all of it)
//   stage 1      gradients all-reduced, each rank updates its shard, params all-gathered
//   stage 2, 3   gradients reduce-scattered in buckets, each rank updates its shard, params all-gathered
// (stage 3 also shards the frozen model: Zero3FrozenWeights.) With a device context (--device cuda) the model
// reads params and writes grads in GPU mirrors. With one rank and the optimizer on the device (no DeepSpeed
// offload_optimizer: cpu) the whole step stays there: the moments live on the GPU, the grad norm, clipping, fp16
// unscaling and AdamW run as device kernels, and only the norm comes down (and the state at checkpoints).
// Otherwise the grads come down once per step, the collectives and the optimizer run on the host, and the params
// go up once.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/comm.h"
#include "dist/zero_cost.h"
#include "dist/zero_partition.h"
#include "kernels/context.h"
#include "model/lora.h"
#include "train/gradient_sync.h"
#include "train/optimizer.h"

namespace zerolora::train {

class Zero3FrozenWeights;
struct TrainingSnapshot;

struct ZeroEngineOptions {
  int stage = 0;  // DeepSpeed's zero_optimization.stage (0 without a config)
  AdamWConfig adamw;
  int64_t reduce_bucket_elements = 500000000;  // DeepSpeed's reduce_bucket_size default (stages 2, 3)
  bool overlap_comm = false;
};

// The optimizer state of the whole buffer (layout.numel() each), gathered from the ranks' shards.
struct FullOptimizerState {
  std::vector<float> params, exp_avg, exp_avg_sq;
  int64_t steps = 0;
};

class ZeroEngine {
 public:
  // The buffers on the host (params zero until initialised through host_params()).
  ZeroEngine(dist::Comm& comm, const model::LoraLayout& layout, const ZeroEngineOptions& options);
  ZeroEngine(const ZeroEngine&) = delete;
  ZeroEngine& operator=(const ZeroEngine&) = delete;

  int stage() const { return stage_; }
  int64_t numel() const { return numel_; }
  int64_t padded_numel() const { return padded_; }
  const AdamWConfig& adamw() const { return opt_.config(); }

  // --device cuda: the model runs on device, the engine keeps GPU mirrors of params and grads there;
  // optimizer_on_device: the moments and the step too, when this is the only rank (see above).
  void use_device(const kernels::Context& device, bool optimizer_on_device);
  bool optimizer_on_device() const { return device_optimizer_; }

  // The full host params: initialise or load them here, then upload_params(). With the optimizer on the device
  // the host copy is current only after download_params() (gather_state() does it).
  float* host_params() { return params_.data(); }
  const float* host_params() const { return params_.data(); }
  void download_params();
  // What the model reads and writes (the GPU mirrors with a device).
  float* model_params() { return device_ ? params_dev_.data() : params_.data(); }
  float* model_grads() { return device_ ? grads_dev_.data() : grads_.data(); }
  void upload_params();  // and the moments, with the optimizer on the device
  // Whether the model's gradient-ready hook may start the reduction during the backward pass (on the GPU the
  // gradients reach the host after it).
  bool reduces_during_backward() const { return device_ == nullptr; }
  void gradients_final_from(int64_t from) { sync_.gradients_final_from(from); }

  // One step: begin_step, then per micro-batch before_micro_batch(last) + forward/backward into model_grads(),
  // then reduce_gradients(); [fp16: gradients_overflow(), unscale_gradients()]; grad_norm(); optimizer_step().
  void begin_step();
  void before_micro_batch(bool last);
  void reduce_gradients();
  // fp16: whether any rank's shard holds a value past half's range (or inf/nan); all-reduced.
  bool gradients_overflow();
  void unscale_gradients(double factor);
  // The global L2 norm of the summed gradients (all-reduced over the shards under ZeRO >= 1).
  double grad_norm();
  // Clips by clip_coef, steps AdamW on this rank's shard, all-gathers the params, uploads them (on the device
  // with the optimizer there: clip and step in place).
  void optimizer_step(double lr, double clip_coef);

  // Checkpoints, world-size independent: every rank calls gather_state (a collective under ZeRO >= 1).
  FullOptimizerState gather_state();
  // A resume: the full params, this rank's slice of the full moments, the step count.
  void load_state(const TrainingSnapshot& snapshot);

  // The ZeRO formula's shape of one step (dist::zero_step_volume); zero3 adds the frozen parts it gathers.
  dist::ZeroStepShape traffic_shape(int64_t gradient_accumulation_steps, const Zero3FrozenWeights* zero3) const;

 private:
  dist::Comm& comm_;
  int stage_ = 0;
  int64_t numel_ = 0;
  dist::FlatPartition part_;
  int64_t padded_ = 0;
  dist::Range shard_;
  std::vector<float> params_, grads_;
  AdamW opt_;
  GradientSync sync_;
  const kernels::Context* device_ = nullptr;
  bool device_optimizer_ = false;
  kernels::DeviceArray<float> params_dev_, grads_dev_, exp_avg_dev_, exp_avg_sq_dev_;
};

}  // namespace zerolora::train
