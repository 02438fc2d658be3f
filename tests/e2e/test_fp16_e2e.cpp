// --fp16: DeepSpeed's dynamic loss scaling in the trainer (forced overflows: the scale trajectory and the
// skipped steps follow the algorithm step for step; the run aborts at the minimum scale), and the quality
// bar: evaluation loss within 1% of the f32 run.
#include <gtest/gtest.h>

#include <cmath>

#include "e2e_util.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

std::string ds_fp16(const TempDir& dir, int power, double min_scale, int hysteresis) {
  const std::string path = (dir / ("ds_fp16_" + std::to_string(power) + ".json")).string();
  write_file(path, "{\"fp16\": {\"enabled\": \"auto\", \"loss_scale\": 0, \"initial_scale_power\": " +
                       std::to_string(power) + ", \"loss_scale_window\": 1000, \"hysteresis\": " +
                       std::to_string(hysteresis) + ", \"min_loss_scale\": " + std::to_string(min_scale) +
                       "}, \"train_micro_batch_size_per_gpu\": \"auto\", \"gradient_accumulation_steps\": \"auto\"}");
  return path;
}

}  // namespace

TEST(Fp16E2E, ForcedOverflowsFollowTheScalerStepForStep) {
  TinyRun run;
  const std::string out = (run.dir / "out").string();
  std::string log;
  // 2^40 makes the first scaled gradients overflow half's range (65504) until the scale has come down
  ASSERT_EQ(run_command(run.train_cmd(out, "--fp16 True --max_steps 40 --per_device_train_batch_size 4 "
                                           "--save_strategy no --deepspeed " + ds_fp16(run.dir, 40, 1, 2)),
                        &log),
            0)
      << log;
  const auto state = read_json_file(fs::path(out) / "trainer_state.json");
  // Replay DeepSpeed's DynamicLossScaler (hysteresis 2, window 1000, non-consecutive) over the logged
  // steps: every step's scale, and the scale after each skipped one, must be the simulated ones.
  double scale = std::ldexp(1.0, 40);
  int hysteresis_left = 2;
  int64_t step = 0, skipped = 0, trained = 0;
  double first_lr = -1;
  for (const auto& e : state["log_history"]) {
    if (!e.contains("loss_scale")) continue;
    ++step;
    ASSERT_EQ(e["step"].get<int64_t>(), step);
    EXPECT_EQ(e["loss_scale"].get<double>(), scale) << "step " << step;
    if (e.value("skipped", false)) {
      ++skipped;
      if (hysteresis_left == 1) scale = std::max(scale / 2, 1.0);
      else --hysteresis_left;
      EXPECT_EQ(e["next_loss_scale"].get<double>(), scale) << "step " << step;
    } else {
      if (trained++ == 0) first_lr = e["learning_rate"].get<double>();
    }
  }
  ASSERT_EQ(step, 40);
  ASSERT_GE(skipped, 3) << log;  // the forced overflows happened
  EXPECT_GE(trained, 10);
  // skipped steps count in global_step but not in the LR schedule: the first applied step used the peak, and
  // its log line shows the rate after one scheduler step, as HF logs it (linear over 40 steps: 5e-3 x 39/40)
  EXPECT_DOUBLE_EQ(first_lr, 5e-3 * 39.0 / 40.0);
  EXPECT_EQ(state["global_step"], 40);
}

TEST(Fp16E2E, AbortsAtTheMinimumScale) {
  TinyRun run;
  std::string log;
  EXPECT_EQ(run_command(run.train_cmd((run.dir / "out").string(),
                                      "--fp16 True --max_steps 40 --per_device_train_batch_size 4 --save_strategy no "
                                      "--deepspeed " + ds_fp16(run.dir, 40, std::ldexp(1.0, 38), 1)),
                        &log),
            1)
      << log;
  EXPECT_NE(log.find("Current loss scale already at minimum"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(run.dir / "out" / "adapter_model.safetensors"));
}

TEST(Fp16E2E, EvalLossWithinOnePercentOfF32) {
  ZL_REQUIRE_SHARED(model, "models/stories260K-hf");
  ZL_REQUIRE_SHARED(data, "data/dummy_conversation.json");
  const Stories260KPrecisionRuns runs(model, data);
  const double f32 = runs.final_eval("f32", "");
  const double half = runs.final_eval("fp16", "--fp16 True");
  EXPECT_LT(std::abs(half - f32) / f32, 0.01) << "f32 " << f32 << " fp16 " << half;
  std::printf("eval loss after 100 steps: f32 %.5f, fp16 %.5f (%.2f%%)\n", f32, half, 100 * (half - f32) / f32);
}
