// Whole-model gradient checks: the explicit backward against central finite differences in double
// precision, LoRA on all seven projections and lm_head, GQA, right padding, ignored labels.
#include <gtest/gtest.h>

#include <cmath>

#include "model_test_util.h"

using namespace zerolora;
using namespace zerolora::test;

namespace {

model::LoraConfig all_targets(int64_t r) {
  model::LoraConfig lc;
  lc.r = r;
  lc.alpha = 3 * r;  // scale 3: a wrong scale shows
  lc.dropout = 0;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"};
  return lc;
}

double loss_at(model::LlamaModel<double>& m, const model::ModelInput& in, const std::vector<double>& p,
               double scale) {
  return m.forward_backward(in, p.data(), nullptr, scale, 0).loss_sum * scale;
}

}  // namespace

TEST(LlamaGradients, MatchFiniteDifferencesInDouble) {
  io::HfConfig c = tiny_grad_config();
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LoraLayout layout(c, all_targets(2));
  model::LlamaModel<double> m(w, &layout);
  TestBatch batch = make_batch(7, 5, int32_t(c.vocab_size), 3);
  auto in = batch.input();
  auto params = random_lora_params<double>(layout, 5);
  std::vector<double> grads(layout.numel(), 0.0);
  auto res = m.forward_backward(in, params.data(), grads.data(), 1.0 / 7.0, 0);
  ASSERT_GT(res.tokens, 0);

  // 4 elements of every A and every B (15 slots): each projection's backward is exercised
  std::vector<int64_t> picks;
  for (const auto& s : layout.slots())
    for (int64_t k = 0; k < 4; ++k) {
      picks.push_back(s.a_offset + (k * 7919) % (s.r * s.in));
      picks.push_back(s.b_offset + (k * 104729) % (s.out * s.r));
    }
  double max_err = 0, max_g = 0;
  const double h = 1e-6;
  for (int64_t i : picks) {
    auto p = params;
    p[i] += h;
    double lp = loss_at(m, in, p, 1.0 / 7.0);
    p[i] -= 2 * h;
    double lm = loss_at(m, in, p, 1.0 / 7.0);
    double fd = (lp - lm) / (2 * h);
    max_err = std::max(max_err, std::abs(fd - grads[i]));
    max_g = std::max(max_g, std::abs(fd));
  }
  ASSERT_GT(max_g, 1e-3) << "gradients are suspiciously small";
  EXPECT_LT(max_err / max_g, 1e-7) << "max abs error " << max_err << " vs max |grad| " << max_g;
}

TEST(LlamaGradients, CheckpointingGivesIdenticalGradients) {
  io::HfConfig c = tiny_grad_config();
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LoraConfig lc = all_targets(2);
  lc.dropout = 0.2;  // the recomputed forward must see the same dropout masks
  model::LoraLayout layout(c, lc);
  TestBatch batch = make_batch(9, 6, int32_t(c.vocab_size), 4);
  auto params = random_lora_params<double>(layout, 6);
  std::vector<double> g1(layout.numel(), 0.0), g2(layout.numel(), 0.0);
  model::LlamaModel<double> plain(w, &layout);
  model::TrainOptions ck;
  ck.gradient_checkpointing = true;
  model::LlamaModel<double> checkpointed(w, &layout, ck);
  auto r1 = plain.forward_backward(batch.input(), params.data(), g1.data(), 0.1, 42);
  auto r2 = checkpointed.forward_backward(batch.input(), params.data(), g2.data(), 0.1, 42);
  EXPECT_EQ(r1.loss_sum, r2.loss_sum);
  EXPECT_EQ(g1, g2);
  EXPECT_LT(checkpointed.activation_bytes(), plain.activation_bytes());
}

// Without checkpointing a layer keeps what its backward cannot recompute cheaply; the projections' inputs xn1,
// xn2 and act are shared by every layer and recomputed where a LoRA dA reads them (BlockActivations::
// recompute_inputs; the gradients' equality with checkpointing and finite differences are the tests above).
// One more layer costs exactly its kept set, counted here by hand from block.h's list.
TEST(LlamaGradients, LayersKeepNoProjectionInputs) {
  io::HfConfig c = tiny_grad_config();
  model::LoraLayout layout2(c, all_targets(2));
  io::HfConfig c3 = c;
  c3.num_hidden_layers = 3;
  model::LoraLayout layout3(c3, all_targets(2));
  const int64_t B = 3, T = 37, M = B * T, C = c.hidden_size, I = c.intermediate_size, r = 2;
  const int64_t Q = c.num_attention_heads * c.head_dim, KV = c.num_key_value_heads * c.head_dim;
  auto pad = [](int64_t n) { return (n + 15) / 16 * 16; };
  const int64_t kept = pad(M) + pad(M * Q) + 2 * pad(M * KV) + pad(M * Q) + pad(B * c.num_attention_heads * T) +
                       pad(M * C) + pad(M) + 2 * pad(M * I) + 7 * pad(M * r);
  const int64_t resid = pad(M * C);  // one more block output
  const model::TrainOptions plain;
  const int64_t d = model::LlamaModel<double>::estimate_activation_bytes(c3, &layout3, plain, B, T) -
                    model::LlamaModel<double>::estimate_activation_bytes(c, &layout2, plain, B, T);
  EXPECT_EQ(d, int64_t(sizeof(double)) * (kept + resid)) << "a layer keeps " << d / 8 << " elements";
  // the three inputs would be 2 C + I more per token and layer
  EXPECT_LT(d, int64_t(sizeof(double)) * (kept + resid + M * (2 * C + I)));
}

TEST(LlamaGradients, DropoutIsAppliedOnlyInTraining) {
  io::HfConfig c = tiny_grad_config();
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LoraConfig lc = all_targets(2);
  lc.dropout = 0.5;
  model::LoraLayout layout(c, lc);
  TestBatch batch = make_batch(6, 6, int32_t(c.vocab_size), 7);
  auto params = random_lora_params<double>(layout, 8);
  model::LlamaModel<double> m(w, &layout);
  std::vector<double> g(layout.numel(), 0.0);
  double eval1 = m.forward_backward(batch.input(), params.data(), nullptr, 1, 1).loss_sum;
  double eval2 = m.forward_backward(batch.input(), params.data(), nullptr, 1, 2).loss_sum;
  double train1 = m.forward_backward(batch.input(), params.data(), g.data(), 1, 1).loss_sum;
  double train2 = m.forward_backward(batch.input(), params.data(), g.data(), 1, 2).loss_sum;
  EXPECT_EQ(eval1, eval2);     // no dropout at evaluation
  EXPECT_NE(train1, train2);   // different masks per seed
  EXPECT_NE(train1, eval1);
}

TEST(LlamaGradients, FloatAgreesWithDouble) {
  io::HfConfig c = tiny_grad_config();
  auto wd = random_weights(c, core::DType::F64, core::DType::F64);
  auto wf = random_weights(c, core::DType::F32, core::DType::F32);
  model::LoraLayout layout(c, all_targets(3));
  TestBatch batch = make_batch(8, 3, int32_t(c.vocab_size), 9);
  auto pd = random_lora_params<double>(layout, 10);
  std::vector<float> pf(pd.begin(), pd.end());
  std::vector<double> gd(layout.numel(), 0.0);
  std::vector<float> gf(layout.numel(), 0.0f);
  model::LlamaModel<double> md(wd, &layout);
  model::LlamaModel<float> mf(wf, &layout);
  auto rd = md.forward_backward(batch.input(), pd.data(), gd.data(), 0.1, 0);
  auto rf = mf.forward_backward(batch.input(), pf.data(), gf.data(), 0.1, 0);
  EXPECT_NEAR(rd.loss_sum, rf.loss_sum, 1e-4 * std::abs(rd.loss_sum));
  double max_err = 0, max_g = 0;
  for (size_t i = 0; i < gd.size(); ++i) {
    max_err = std::max(max_err, std::abs(gd[i] - double(gf[i])));
    max_g = std::max(max_g, std::abs(gd[i]));
  }
  EXPECT_LT(max_err / max_g, 1e-4);
}

TEST(LlamaForward, LossEqualsLogitsCrossEntropy) {
  io::HfConfig c = tiny_grad_config();
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LoraLayout layout(c, all_targets(2));
  model::LlamaModel<double> m(w, &layout);
  TestBatch batch = make_batch(6, 4, int32_t(c.vocab_size), 11);
  auto params = random_lora_params<double>(layout, 12);
  std::vector<double> logits(batch.B * batch.T * c.vocab_size);
  m.forward_logits(batch.input(), params.data(), logits.data());
  double expect = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < batch.B; ++r)
    for (int64_t t = 0; t + 1 < batch.T; ++t) {
      int32_t y = batch.labels[r * batch.T + t + 1];
      if (y == -100) continue;
      const double* z = logits.data() + (r * batch.T + t) * c.vocab_size;
      double mx = *std::max_element(z, z + c.vocab_size), s = 0;
      for (int64_t v = 0; v < c.vocab_size; ++v) s += std::exp(z[v] - mx);
      expect += -(z[y] - mx - std::log(s));
      ++n;
    }
  auto res = m.forward_backward(batch.input(), params.data(), nullptr, 1, 0);
  EXPECT_EQ(res.tokens, n);
  EXPECT_NEAR(res.loss_sum, expect, 1e-10 * std::abs(expect));
}

TEST(LlamaForward, PaddingDoesNotChangeValidRows) {
  // Row 1 alone (length 5) must give the same logits as inside a padded batch.
  io::HfConfig c = tiny_grad_config();
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LlamaModel<double> m(w, nullptr);
  TestBatch batch = make_batch(8, 5, int32_t(c.vocab_size), 13);
  std::vector<double> all(batch.B * batch.T * c.vocab_size);
  m.forward_logits(batch.input(), nullptr, all.data());
  model::ModelInput one;
  one.B = 1, one.T = 5, one.input_ids = batch.ids.data() + batch.T;
  std::vector<double> single(5 * c.vocab_size);
  m.forward_logits(one, nullptr, single.data());
  for (int64_t i = 0; i < 5 * c.vocab_size; ++i)
    ASSERT_NEAR(single[i], all[(batch.T) * c.vocab_size + i], 1e-12) << i;
}

TEST(LlamaForward, Bf16WeightsStayCloseToF32) {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  auto wf = random_weights(c, core::DType::F32, core::DType::F32, 3, 0.05);
  auto wb = random_weights(c, core::DType::F32, core::DType::BF16, 3, 0.05);
  model::LlamaModel<float> mf(wf, nullptr), mb(wb, nullptr);
  TestBatch batch = make_batch(16, 10, int32_t(c.vocab_size), 14);
  std::vector<float> lf(batch.B * batch.T * c.vocab_size), lb(lf.size());
  mf.forward_logits(batch.input(), nullptr, lf.data());
  mb.forward_logits(batch.input(), nullptr, lb.data());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < lf.size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(lf[i] - lb[i])));
    max_abs = std::max(max_abs, double(std::abs(lf[i])));
  }
  EXPECT_GT(max_diff, 0.0);                 // bf16 really is used
  EXPECT_LT(max_diff, 0.02 * max_abs + 1e-3);  // bf16 has 8 bits of mantissa: ~0.4% per rounding
}
