#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "train/lr_schedule.h"

using namespace zerolora::train;

TEST(LrSchedule, CosineWithWarmup) {
  LrSchedule s(LrSchedulerType::Cosine, 2e-5, /*total=*/100, /*warmup=*/3);
  EXPECT_EQ(s.factor(0), 0.0);  // HF: the first update runs at lr 0 when there is warmup
  EXPECT_DOUBLE_EQ(s.factor(1), 1.0 / 3);
  EXPECT_DOUBLE_EQ(s.factor(2), 2.0 / 3);
  EXPECT_DOUBLE_EQ(s.factor(3), 1.0);
  // t=50: progress 47/97, 0.5 (1 + cos(pi 47/97)) = 0.5 (1 + sin(pi/2 - pi 47/97)) ~ 0.5 (1 + 0.048562)
  EXPECT_NEAR(s.factor(50), 0.5242811110572241, 1e-14);
  // t=99: progress 96/97, 0.5 (1 - cos(pi/97)) = sin^2(pi/194)
  EXPECT_NEAR(s.factor(99), std::pow(std::sin(M_PI / 194), 2), 1e-15);
  EXPECT_NEAR(s.factor(99), 0.00026221547724253336, 1e-15);
  EXPECT_EQ(s.factor(100), 0.0);
  // past the end HF does not clamp the progress: the cosine rises again (training never gets there)
  EXPECT_NEAR(s.factor(150), 0.5 * (1 + std::cos(M_PI * 147 / 97)), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(3), 2e-5);
  EXPECT_DOUBLE_EQ(s.lr(1), 2e-5 / 3);
}

TEST(LrSchedule, LinearWithWarmup) {
  LrSchedule s(LrSchedulerType::Linear, 1.0, 10, 2);
  EXPECT_EQ(s.factor(0), 0.0);
  EXPECT_EQ(s.factor(1), 0.5);
  EXPECT_EQ(s.factor(2), 1.0);    // (10 - 2) / 8
  EXPECT_EQ(s.factor(6), 0.5);    // (10 - 6) / 8
  EXPECT_EQ(s.factor(9), 0.125);  // (10 - 9) / 8
  EXPECT_EQ(s.factor(10), 0.0);
  EXPECT_EQ(s.factor(12), 0.0);
  LrSchedule no_warmup(LrSchedulerType::Linear, 1.0, 4, 0);
  EXPECT_EQ(no_warmup.factor(0), 1.0);
  EXPECT_EQ(no_warmup.factor(1), 0.75);
}

TEST(LrSchedule, ConstantKinds) {
  LrSchedule warm(LrSchedulerType::ConstantWithWarmup, 1.0, 100, 4);
  EXPECT_EQ(warm.factor(0), 0.0);
  EXPECT_EQ(warm.factor(2), 0.5);
  EXPECT_EQ(warm.factor(4), 1.0);
  EXPECT_EQ(warm.factor(1000), 1.0);
  LrSchedule flat(LrSchedulerType::Constant, 3e-4, 100, 4);  // HF's constant ignores warmup
  EXPECT_EQ(flat.factor(0), 1.0);
  EXPECT_EQ(flat.lr(99), 3e-4);
}

TEST(LrSchedule, TotalEqualsWarmupDoesNotDivideByZero) {
  LrSchedule s(LrSchedulerType::Cosine, 1.0, 5, 5);  // T - W = 0 -> max(1, 0)
  EXPECT_EQ(s.factor(4), 0.8);
  EXPECT_EQ(s.factor(5), 1.0);  // progress 0
  EXPECT_EQ(LrSchedule(LrSchedulerType::Linear, 1.0, 5, 5).factor(5), 0.0);
}

namespace {
TrainArgs args_with(int64_t batch, int64_t ga, double epochs) {
  TrainArgs a;
  a.per_device_train_batch_size = batch;
  a.gradient_accumulation_steps = ga;
  a.num_train_epochs = epochs;
  a.warmup_ratio = 0.03;
  return a;
}
}  // namespace

// FastChat's dummy data (500 conversations) on 4 ranks, batch 2.
TEST(TrainingPlan, StepCountsAsHf) {
  EXPECT_EQ(micro_batches_per_epoch(500, 4, 2), 63);  // ceil(ceil(500/4)/2) = ceil(125/2)
  EXPECT_EQ(micro_batches_per_epoch(501, 4, 2), 63);  // ceil(501/4) = 126 -> 63
  EXPECT_EQ(micro_batches_per_epoch(505, 4, 2), 64);  // ceil(505/4) = 127 -> 64

  TrainingPlan p = plan_training(args_with(2, 1, 3), 500, 4);
  EXPECT_EQ(p.micro_batches_per_epoch, 63);
  EXPECT_EQ(p.steps_per_epoch, 63);
  EXPECT_EQ(p.total_steps, 189);
  EXPECT_EQ(p.epochs, 3);
  EXPECT_EQ(p.warmup_steps, 6);  // ceil(189 * 0.03) = ceil(5.67)

  p = plan_training(args_with(2, 4, 3), 500, 4);
  EXPECT_EQ(p.steps_per_epoch, 15);  // floor(63 / 4)
  EXPECT_EQ(p.total_steps, 45);
  EXPECT_EQ(p.warmup_steps, 2);  // ceil(1.35)

  p = plan_training(args_with(8, 4, 1), 10, 1);  // 2 micro-batches, GA 4: still one step per epoch
  EXPECT_EQ(p.steps_per_epoch, 1);
  EXPECT_EQ(p.total_steps, 1);
}

TEST(TrainingPlan, FractionalEpochsMaxStepsAndWarmupSteps) {
  TrainingPlan p = plan_training(args_with(2, 1, 2.5), 500, 4);
  EXPECT_EQ(p.total_steps, 158);  // ceil(2.5 * 63) = ceil(157.5)
  EXPECT_EQ(p.epochs, 3);

  TrainArgs a = args_with(2, 1, 3);
  a.max_steps = 100;
  a.warmup_steps = 10;
  p = plan_training(a, 500, 4);
  EXPECT_EQ(p.total_steps, 100);
  EXPECT_EQ(p.epochs, 2);  // ceil(100 / 63)
  EXPECT_EQ(p.warmup_steps, 10);
}

TEST(TrainingPlan, IntervalsResolveFractions) {
  TrainArgs a = args_with(2, 1, 3);  // total 189
  a.logging_steps = 0.1;
  a.save_steps = 200;
  a.evaluation_strategy = IntervalStrategy::Steps;  // eval_steps not given: logging_steps (HF)
  TrainingPlan p = plan_training(a, 500, 4);
  EXPECT_EQ(p.logging_steps, 19);  // ceil(18.9)
  EXPECT_EQ(p.save_steps, 200);
  EXPECT_EQ(p.eval_steps, 19);
  a.save_strategy = IntervalStrategy::Epoch;
  a.evaluation_strategy = IntervalStrategy::No;
  p = plan_training(a, 500, 4);
  EXPECT_EQ(p.save_steps, 0);
  EXPECT_EQ(p.eval_steps, 0);
  EXPECT_EQ(absolute_interval(1, 189), 1);
  EXPECT_EQ(absolute_interval(0.5, 7), 4);
}

TEST(TrainingPlan, EmptyDataIsAnError) {
  EXPECT_THROW(plan_training(args_with(2, 1, 3), 0, 1), zerolora::core::Error);
}

TEST(LrSchedule, FromArgsAndPlan) {
  TrainArgs a = args_with(2, 1, 3);
  a.lr_scheduler_type = LrSchedulerType::Cosine;
  a.learning_rate = 2e-5;
  TrainingPlan p = plan_training(a, 500, 4);
  LrSchedule s(a, p);
  EXPECT_EQ(s.total_steps(), 189);
  EXPECT_EQ(s.warmup_steps(), 6);
  EXPECT_DOUBLE_EQ(s.lr(3), 2e-5 * 0.5);
  EXPECT_DOUBLE_EQ(s.lr(6), 2e-5);
}
