// Training stories260K (the real pretrained model) on a few hundred tokens of new text with LoRA + AdamW
// drives the loss down; a wrong gradient sign or a broken update would make it rise or stall.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/kernels.h"
#include "model/llama.h"
#include "test_util.h"
#include "train/optimizer.h"

using namespace zerolora;

TEST(TrainingConverges, Stories260KLearnsNewText) {
  ZL_REQUIRE_SHARED(dir, "models/stories260K-hf");
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::F32);
  model::LoraConfig lc;
  lc.r = 8, lc.alpha = 16, lc.dropout = 0.0;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  model::LoraLayout layout(w.config, lc);
  std::vector<float> params(layout.numel());
  model::init_lora_params(layout, params.data(), 1);
  model::LlamaModel<float> m(w, &layout);
  // 4 rows x 64 tokens of a fixed random token stream: text the model has never seen
  const int64_t B = 4, T = 64;
  std::mt19937 rng(7);
  std::vector<int32_t> ids(B * T);
  for (auto& id : ids) id = int32_t(3 + rng() % 509);
  for (int64_t b = 0; b < B; ++b) ids[b * T] = 1;
  std::vector<int32_t> labels = ids;
  model::ModelInput in;
  in.B = B, in.T = T, in.input_ids = ids.data(), in.labels = labels.data();
  train::AdamW opt(layout.numel(), {0.9, 0.999, 1e-8, 0.0});
  std::vector<float> grads(layout.numel());
  double first = 0, last = 0;
  for (int step = 0; step < 25; ++step) {
    std::fill(grads.begin(), grads.end(), 0.f);
    const int64_t tokens = B * (T - 1);
    auto r = m.forward_backward(in, params.data(), grads.data(), 1.0 / double(tokens), 0);
    const double loss = r.loss_sum / double(r.tokens);
    if (step == 0) first = loss;
    last = loss;
    ASSERT_TRUE(std::isfinite(loss));
    opt.step(params.data(), grads.data(), 1e-2);
  }
  // random tokens start near ln(512) + the model's confidence penalty; 25 steps must cut it by half
  EXPECT_GT(first, 5.0);
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}
