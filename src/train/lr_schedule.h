// Step counts and the learning-rate schedule, with HF Trainer's formulas (fastchat-spec §8,
// deepspeed-peft-spec §3.3), so a FastChat run and a zerolora run agree step for step.
//
// Step numbering: step t (0-based) is the optimizer update number t+1. lr(t) is the rate that update uses,
// as HF's LambdaLR: the scheduler starts at t = 0 and is stepped after every update. HF logs
// `learning_rate` after that scheduler step, so the value in a log line at global_step g is lr(g).
#pragma once
#include <cstdint>

#include "train/args.h"

namespace zerolora::train {

// How many micro-batches, optimizer steps, epochs and warmup steps a run has.
struct TrainingPlan {
  int64_t micro_batches_per_epoch = 0;  // len(dataloader) on each rank
  int64_t steps_per_epoch = 0;          // optimizer updates per epoch
  int64_t total_steps = 0;              // optimizer updates in the whole run (HF max_steps)
  int64_t epochs = 0;                   // epochs the loop starts (the last may stop early)
  int64_t warmup_steps = 0;
  // Absolute intervals (HF resolves values < 1 as a fraction of total_steps); 0 when the strategy is not steps.
  int64_t logging_steps = 0;
  int64_t eval_steps = 0;
  int64_t save_steps = 0;
};

// len(dataloader) per rank: the distributed sampler pads the data to a multiple of world_size by repeating
// samples, so each rank sees ceil(N / world) samples, in ceil(that / per_device_batch) micro-batches.
int64_t micro_batches_per_epoch(int64_t num_samples, int64_t world_size, int64_t per_device_batch_size);

// steps_per_epoch = max(floor(micro_batches / GA), 1)
// total           = max_steps if > 0, else ceil(num_train_epochs * steps_per_epoch)
// epochs          = ceil(num_train_epochs), or with max_steps: ceil(max_steps / steps_per_epoch)
// warmup          = warmup_steps if > 0, else ceil(total * warmup_ratio)
TrainingPlan plan_training(const TrainArgs& args, int64_t num_train_samples, int64_t world_size);

// HF interval resolution: a value < 1 is a fraction of total_steps (rounded up), else the value itself.
int64_t absolute_interval(double steps_or_fraction, int64_t total_steps);

// HF schedules as LambdaLR multipliers of base_lr (W = warmup, T = total):
//   constant              1
//   constant_with_warmup  t < W: t / max(1, W)          else 1
//   linear                t < W: t / max(1, W)          else max(0, (T - t) / max(1, T - W))
//   cosine                t < W: t / max(1, W)          else max(0, 0.5 (1 + cos(pi p))), p = (t - W) / max(1, T - W)
// Past T nothing is clamped beyond HF's max(0, .), so cosine rises again there, as in HF.
class LrSchedule {
 public:
  LrSchedule(LrSchedulerType type, double base_lr, int64_t total_steps, int64_t warmup_steps);
  LrSchedule(const TrainArgs& args, const TrainingPlan& plan)
      : LrSchedule(args.lr_scheduler_type, args.learning_rate, plan.total_steps, plan.warmup_steps) {}

  double factor(int64_t step) const;                   // the multiplier at step t
  double lr(int64_t step) const { return base_lr_ * factor(step); }

  LrSchedulerType type() const { return type_; }
  double base_lr() const { return base_lr_; }
  int64_t total_steps() const { return total_steps_; }
  int64_t warmup_steps() const { return warmup_steps_; }

 private:
  LrSchedulerType type_;
  double base_lr_;
  int64_t total_steps_;
  int64_t warmup_steps_;
};

}  // namespace zerolora::train
