// ZeroEngine on one rank: the step it takes is AdamW over the clipped flat gradient, bit for bit as the
// optimizer alone takes it; its checkpoint state round-trips through load_state; the traffic shape names its
// stage and the padded buffer. (Several ranks: ZeroMpi.* run the whole trainer on 2-4 ranks and stages 0-3.)
#include "train/zero_engine.h"

#include <gtest/gtest.h>

#include <cmath>

#include "dist/solo_comm.h"
#include "train/training_checkpoint.h"

namespace zerolora::train {
namespace {

io::HfConfig tiny_config() {
  io::HfConfig c;
  c.vocab_size = 32, c.hidden_size = 16, c.intermediate_size = 32, c.num_hidden_layers = 2;
  c.num_attention_heads = 2, c.num_key_value_heads = 2, c.head_dim = 8;
  return c;
}

model::LoraConfig tiny_lora() {
  model::LoraConfig lc;
  lc.r = 4, lc.alpha = 8, lc.dropout = 0;
  return lc;
}

void fill(float* x, int64_t n, float base) {
  for (int64_t i = 0; i < n; ++i) x[i] = base * std::sin(float(i) * 0.37f + base);
}

class ZeroEngineStage : public ::testing::TestWithParam<int> {};

TEST_P(ZeroEngineStage, StepIsClippedAdamWAndStateRoundTrips) {
  dist::SoloComm comm;
  const model::LoraLayout layout(tiny_config(), tiny_lora());
  ZeroEngineOptions o;
  o.stage = GetParam();
  o.adamw = {0.9, 0.999, 1e-8, 0.01};
  ZeroEngine engine(comm, layout, o);
  const int64_t n = engine.numel();
  ASSERT_GT(n, 0);
  ASSERT_GE(engine.padded_numel(), n);
  fill(engine.host_params(), n, 0.5f);
  std::vector<float> ref_params(engine.host_params(), engine.host_params() + engine.padded_numel());
  AdamW ref(engine.padded_numel(), o.adamw);

  for (int step = 0; step < 3; ++step) {
    engine.begin_step();
    engine.before_micro_batch(true);
    fill(engine.model_grads(), n, 2.0f + float(step));
    std::vector<float> g(engine.model_grads(), engine.model_grads() + engine.padded_numel());
    engine.reduce_gradients();  // one rank: the sum is the buffer itself
    double sq = 0;
    for (float x : g) sq += double(x) * double(x);
    const double norm = engine.grad_norm();
    // kernels::sum_squares may add in another order: a few ulps of a double over ~n terms
    EXPECT_NEAR(norm, std::sqrt(sq), 1e-9 * std::sqrt(sq));
    const double coef = clip_coefficient(norm, 1.0);
    engine.optimizer_step(1e-2, coef);
    scale_in_place(g.data(), int64_t(g.size()), coef);
    ref.step(ref_params.data(), g.data(), 1e-2);
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(engine.host_params()[i], ref_params[size_t(i)]) << i;

  const FullOptimizerState full = engine.gather_state();
  ASSERT_EQ(int64_t(full.params.size()), n);
  EXPECT_EQ(full.steps, 3);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(full.exp_avg[size_t(i)], ref.exp_avg()[size_t(i)]) << i;
    ASSERT_EQ(full.exp_avg_sq[size_t(i)], ref.exp_avg_sq()[size_t(i)]) << i;
  }

  TrainingSnapshot snap;
  snap.params = full.params, snap.exp_avg = full.exp_avg, snap.exp_avg_sq = full.exp_avg_sq;
  snap.optimizer_steps = full.steps;
  ZeroEngine resumed(comm, layout, o);
  resumed.load_state(snap);
  const FullOptimizerState again = resumed.gather_state();
  EXPECT_EQ(again.params, full.params);
  EXPECT_EQ(again.exp_avg, full.exp_avg);
  EXPECT_EQ(again.exp_avg_sq, full.exp_avg_sq);
  EXPECT_EQ(again.steps, 3);

  const dist::ZeroStepShape shape = engine.traffic_shape(4, nullptr);
  EXPECT_EQ(shape.stage, GetParam());
  EXPECT_EQ(shape.world, 1);
  EXPECT_EQ(shape.gradient_accumulation_steps, 4);
  EXPECT_EQ(shape.trainable_elements, engine.padded_numel());
  EXPECT_EQ(shape.frozen_gathered_elements, 0);
}

INSTANTIATE_TEST_SUITE_P(AllStages, ZeroEngineStage, ::testing::Values(0, 1, 2, 3));

}  // namespace
}  // namespace zerolora::train
