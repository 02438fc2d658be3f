#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace zerolora::train {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// math.ceil on the same double product HF computes, so fractional epochs and ratios round as they do there.
int64_t ceil_to_int(double x) { return static_cast<int64_t>(std::ceil(x)); }

}  // namespace

int64_t micro_batches_per_epoch(int64_t num_samples, int64_t world_size, int64_t per_device_batch_size) {
  core::check(num_samples > 0, "training data", "has no samples", "check --data_path");
  core::check(world_size >= 1 && per_device_batch_size >= 1, "micro_batches_per_epoch",
              "world size and batch size must be >= 1");
  return ceil_div(ceil_div(num_samples, world_size), per_device_batch_size);
}

int64_t absolute_interval(double steps_or_fraction, int64_t total_steps) {
  if (steps_or_fraction < 1) return ceil_to_int(static_cast<double>(total_steps) * steps_or_fraction);
  return static_cast<int64_t>(steps_or_fraction);
}

TrainingPlan plan_training(const TrainArgs& args, int64_t num_train_samples, int64_t world_size) {
  TrainingPlan plan;
  plan.micro_batches_per_epoch =
      micro_batches_per_epoch(num_train_samples, world_size, args.per_device_train_batch_size);
  plan.steps_per_epoch = std::max<int64_t>(plan.micro_batches_per_epoch / args.gradient_accumulation_steps, 1);
  if (args.max_steps > 0) {
    plan.total_steps = args.max_steps;
    plan.epochs = ceil_div(args.max_steps, plan.steps_per_epoch);
  } else {
    plan.total_steps = ceil_to_int(args.num_train_epochs * static_cast<double>(plan.steps_per_epoch));
    plan.epochs = ceil_to_int(args.num_train_epochs);
  }
  plan.warmup_steps = args.warmup_steps > 0
                          ? args.warmup_steps
                          : ceil_to_int(static_cast<double>(plan.total_steps) * args.warmup_ratio);
  if (args.logging_strategy == IntervalStrategy::Steps)
    plan.logging_steps = absolute_interval(args.logging_steps, plan.total_steps);
  if (args.save_strategy == IntervalStrategy::Steps)
    plan.save_steps = absolute_interval(args.save_steps, plan.total_steps);
  if (args.evaluation_strategy == IntervalStrategy::Steps)
    plan.eval_steps = absolute_interval(args.eval_steps.value_or(args.logging_steps), plan.total_steps);
  return plan;
}

LrSchedule::LrSchedule(LrSchedulerType type, double base_lr, int64_t total_steps, int64_t warmup_steps)
    : type_(type), base_lr_(base_lr), total_steps_(total_steps), warmup_steps_(warmup_steps) {
  core::check(total_steps >= 0 && warmup_steps >= 0, "LrSchedule", "step counts must be >= 0");
}

double LrSchedule::factor(int64_t step) const {
  const double t = static_cast<double>(step);
  const double W = static_cast<double>(warmup_steps_);
  const double T = static_cast<double>(total_steps_);
  if (type_ == LrSchedulerType::Constant) return 1.0;
  if (step < warmup_steps_) return t / std::max(1.0, W);
  const double decay_span = std::max(1.0, T - W);
  switch (type_) {
    case LrSchedulerType::ConstantWithWarmup:
      return 1.0;
    case LrSchedulerType::Linear:
      return std::max(0.0, (T - t) / decay_span);
    case LrSchedulerType::Cosine: {
      const double progress = (t - W) / decay_span;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    }
    case LrSchedulerType::Constant:
      break;
  }
  return 1.0;
}

}  // namespace zerolora::train
