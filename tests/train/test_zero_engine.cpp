// ZeroEngine on one rank: the step it takes is AdamW over the clipped flat gradient, bit for bit as the
// optimizer alone takes it; its checkpoint state round-trips through load_state; the traffic shape names its
// stage and the padded buffer. (Several ranks: ZeroMpi.* run the whole trainer on 2-4 ranks and stages 0-3.)
#include "train/zero_engine.h"

#include <gtest/gtest.h>

#include <cmath>

#include "dist/solo_comm.h"
#include "kernels/context.h"
#include "kernels/kernels.h"
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

// The optimizer on the device (--device cuda, one rank): norm, fp16 unscaling, clipping and AdamW as kernels of
// the context on its mirrors, the state coming down at checkpoints and going up at resume. Against the host
// engine on the same gradients: on the host context the same kernels run, so bit for bit; on a GPU the AdamW kernel
// does the same fp32 operations (kernels/cuda/adamw.cu) but the compiler may contract a multiply-add, a rounding
// of 2^-24 per operation: 1e-6 of each value's magnitude over 4 steps bounds it; the norm is a double sum in
// another order (1e-9 relative, as above).
void expect_device_optimizer_matches_host(const kernels::Context& ctx, double tol) {
  dist::SoloComm comm;
  const model::LoraLayout layout(tiny_config(), tiny_lora());
  ZeroEngineOptions o;
  o.stage = 2;
  o.adamw = {0.9, 0.999, 1e-8, 0.01};
  ZeroEngine host(comm, layout, o), dev(comm, layout, o);
  dev.use_device(ctx, true);
  ASSERT_TRUE(dev.optimizer_on_device());
  const int64_t n = host.numel(), padded = host.padded_numel();
  fill(host.host_params(), n, 0.5f);
  fill(dev.host_params(), n, 0.5f);
  dev.upload_params();
  auto close = [&](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_LE(std::abs(double(a[i]) - double(b[i])), tol * std::abs(double(b[i]))) << what << " " << i;
  };
  auto run_steps = [&](ZeroEngine& d, int from, int to) {
    for (int step = from; step < to; ++step) {
      std::vector<float> g(size_t(padded), 0.f);
      fill(g.data(), n, 2.0f + float(step));
      for (ZeroEngine* e : {&host, &d}) {
        e->begin_step();
        e->before_micro_batch(true);
        kernels::copy_to_device(e->model_grads(), g.data(), g.size() * sizeof(float),
                                e == &host ? kernels::host() : ctx);
        e->reduce_gradients();
        EXPECT_FALSE(e->gradients_overflow());
        e->unscale_gradients(0.5);  // as --fp16's loss scale of 2
      }
      const double nh = host.grad_norm(), nd = d.grad_norm();
      EXPECT_NEAR(nd, nh, 1e-9 * nh);
      host.optimizer_step(1e-2, clip_coefficient(nh, 1.0));
      d.optimizer_step(1e-2, clip_coefficient(nh, 1.0));
    }
  };
  run_steps(dev, 0, 3);
  const FullOptimizerState a = host.gather_state(), b = dev.gather_state();
  EXPECT_EQ(b.steps, 3);
  close(b.params, a.params, "params");
  close(b.exp_avg, a.exp_avg, "exp_avg");
  close(b.exp_avg_sq, a.exp_avg_sq, "exp_avg_sq");
  // a resume onto the device: the state goes up and the next step continues from it
  TrainingSnapshot snap;
  snap.params = b.params, snap.exp_avg = b.exp_avg, snap.exp_avg_sq = b.exp_avg_sq, snap.optimizer_steps = b.steps;
  ZeroEngine resumed(comm, layout, o);
  resumed.use_device(ctx, true);
  resumed.load_state(snap);
  resumed.upload_params();
  run_steps(resumed, 3, 4);
  const FullOptimizerState c = host.gather_state(), d = resumed.gather_state();
  EXPECT_EQ(d.steps, 4);
  close(d.params, c.params, "params after resume");
  close(d.exp_avg_sq, c.exp_avg_sq, "exp_avg_sq after resume");
  resumed.download_params();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(resumed.host_params()[i], d.params[size_t(i)]) << i;
}

// --lora_bias all on a model with projection biases: the biases (laid out after the LoRA weights) take no weight
// decay, as HF Trainer's no-decay group; the LoRA weights do. Each range equals AdamW with its own decay bit for bit,
// at every ZeRO stage, and for shards that start inside either range (AdamW::step's offset).
TEST(ZeroEngineBiases, BiasesTakeNoWeightDecayAsHfTrainer) {
  io::HfConfig c = tiny_config();
  c.attention_bias = true;
  model::LoraConfig lc = tiny_lora();
  lc.bias = "all";
  const model::LoraLayout layout(c, lc);
  const int64_t lora = layout.lora_numel(), n = layout.numel();
  ASSERT_GT(lora, 0);
  ASSERT_GT(n, lora);  // q, k, v, o biases after the LoRA run
  for (int stage : {0, 2}) {
    dist::SoloComm comm;
    ZeroEngineOptions o;
    o.stage = stage;
    o.adamw = {0.9, 0.999, 1e-8, 0.1};
    ZeroEngine engine(comm, layout, o);
    fill(engine.host_params(), n, 0.5f);
    std::vector<float> with_decay(engine.host_params(), engine.host_params() + engine.padded_numel());
    std::vector<float> without = with_decay;
    AdamW ref_decay(engine.padded_numel(), o.adamw), ref_plain(engine.padded_numel(), {0.9, 0.999, 1e-8, 0.0});
    for (int step = 0; step < 2; ++step) {
      engine.begin_step();
      engine.before_micro_batch(true);
      fill(engine.model_grads(), n, 1.0f + float(step));
      std::vector<float> g(engine.model_grads(), engine.model_grads() + engine.padded_numel());
      engine.reduce_gradients();
      engine.optimizer_step(1e-2, 1.0);
      ref_decay.step(with_decay.data(), g.data(), 1e-2);
      ref_plain.step(without.data(), g.data(), 1e-2);
    }
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(engine.host_params()[i], i < lora ? with_decay[size_t(i)] : without[size_t(i)])
          << "stage " << stage << ", element " << i << (i < lora ? " (LoRA)" : " (bias)");
  }
  // a shard from inside the LoRA run over the boundary, and one inside the biases
  AdamWConfig cfg{0.9, 0.999, 1e-8, 0.1};
  cfg.decay_end = 10;
  EXPECT_EQ(decayed_count(cfg, 4, 20), 6);
  EXPECT_EQ(decayed_count(cfg, 12, 5), 0);
  EXPECT_EQ(decayed_count(cfg, 0, 8), 8);
  std::vector<float> p(20, 1.0f), q(20, 1.0f), gr(20, 0.5f);
  AdamW shard(20, cfg), whole(30, cfg);
  shard.step(p.data(), gr.data(), 1e-2, 4);  // elements 4..23: 4..9 decayed, 10..23 not
  std::vector<float> pw(30, 1.0f), gw(30, 0.5f);
  whole.step(pw.data(), gw.data(), 1e-2, 0);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(p[size_t(i)], pw[size_t(i + 4)]) << i;
  EXPECT_NE(pw[9], pw[10]);  // decayed and not: the decay moved the first
}

TEST(ZeroEngineDevice, OptimizerOnTheHostContextIsTheHostStepBitForBit) {
  expect_device_optimizer_matches_host(kernels::host(), 0.0);
}

TEST(ZeroEngineDevice, OptimizerOnTheGpuMatchesTheHostStep) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: device optimizer test skipped";
  kernels::CudaContext gpu(0);
  expect_device_optimizer_matches_host(gpu.ctx(), 1e-6);
}

}  // namespace
}  // namespace zerolora::train
