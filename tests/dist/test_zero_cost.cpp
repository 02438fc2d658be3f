// Communication volume and memory formulas, against numbers worked out by hand from the spec.
#include <gtest/gtest.h>

#include "core/error.h"
#include "dist/zero_cost.h"

using namespace zerolora::dist;

TEST(RingBytes, ZeroPaperVolumes) {
  EXPECT_DOUBLE_EQ(ring_bytes_sent(Collective::AllReduce, 1000, 4), 1500);
  EXPECT_DOUBLE_EQ(ring_bytes_sent(Collective::ReduceScatter, 1000, 4), 750);
  EXPECT_DOUBLE_EQ(ring_bytes_sent(Collective::AllGather, 1000, 4), 750);
  EXPECT_DOUBLE_EQ(ring_bytes_sent(Collective::Broadcast, 1000, 4), 1000);
  for (auto c : {Collective::AllReduce, Collective::ReduceScatter, Collective::AllGather,
                 Collective::Broadcast})
    EXPECT_EQ(ring_bytes_sent(c, 1000, 1), 0);  // one rank sends nothing
}

TEST(ZeroStepVolume, StagesZeroToThree) {
  ZeroStepShape s;
  s.world = 4;
  s.gradient_accumulation_steps = 2;
  s.trainable_elements = 1000;  // 4000 bytes of fp32 grads or params
  s.stage = 0;
  ZeroStepVolume v = zero_step_volume(s);
  EXPECT_DOUBLE_EQ(v.all_reduce_bytes, 6000);  // 2 * 3/4 * 4000, once per step whatever the GAS
  EXPECT_DOUBLE_EQ(v.total(), 6000);
  s.stage = 1;
  v = zero_step_volume(s);
  EXPECT_DOUBLE_EQ(v.all_reduce_bytes, 6000);
  EXPECT_DOUBLE_EQ(v.all_gather_bytes, 3000);
  EXPECT_DOUBLE_EQ(v.reduce_scatter_bytes, 0);
  s.stage = 2;
  v = zero_step_volume(s);
  EXPECT_DOUBLE_EQ(v.all_reduce_bytes, 0);
  EXPECT_DOUBLE_EQ(v.reduce_scatter_bytes, 6000);  // 3/4 * 4000 per micro-step, 2 micro-steps
  EXPECT_DOUBLE_EQ(v.all_gather_bytes, 3000);
  s.stage = 3;
  s.frozen_gathered_elements = 10000;  // bf16: 20000 bytes per gather
  s.trainable_persistent_elements = 200;
  v = zero_step_volume(s);
  // per gather pass 20000 + 800*4 = 23200 bytes, twice per micro-step, 2 micro-steps; persistent
  // 200*4 bytes gathered once after the step.
  EXPECT_DOUBLE_EQ(v.all_gather_bytes, 2 * 2 * 0.75 * 23200 + 0.75 * 800);
  EXPECT_DOUBLE_EQ(v.reduce_scatter_bytes, 6000);
  // zerolora's schedule: grads reduced once per step, every trainable persistent, embedding and
  // lm_head gathered once per micro-step
  ZeroStepShape z = s;
  z.grads_reduced_every_micro_step = false;
  z.trainable_persistent_elements = z.trainable_elements;
  z.frozen_forward_only_elements = 3000;  // bf16: 6000 bytes
  v = zero_step_volume(z);
  EXPECT_DOUBLE_EQ(v.reduce_scatter_bytes, 3000);  // 3/4 * 4000, once
  EXPECT_DOUBLE_EQ(v.all_gather_bytes, 2 * 2 * 0.75 * 20000 + 2 * 0.75 * 6000 + 0.75 * 4000);
  z.stage = 2;
  EXPECT_DOUBLE_EQ(zero_step_volume(z).reduce_scatter_bytes, 3000);
  s.world = 1;
  EXPECT_EQ(zero_step_volume(s).total(), 0);
  s.stage = 4;
  EXPECT_THROW(zero_step_volume(s), zerolora::core::Error);
}

TEST(ZeroMemory, SpecLoraFormulasWithDeepSpeedWidths) {
  ZeroMemoryShape m;  // defaults: b = p = g = 2, K = 12
  m.world = 4;
  m.frozen_elements = 1'000'000;
  m.trainable_elements = 10'000;
  m.stage = 0;
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(m), 2e6 + 16 * 1e4);
  m.stage = 1;  // bΨb + 4Ψa + 12Ψa/N
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(m), 2e6 + 4e4 + 12e4 / 4);
  m.stage = 2;  // bΨb + 2Ψa + 14Ψa/N
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(m), 2e6 + 2e4 + 14e4 / 4);
  m.stage = 3;  // (bΨb + 16Ψa)/N + working set + persistent
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(m), (2e6 + 16e4) / 4);
  m.working_set_elements = 5000;
  m.trainable_persistent_elements = 100;
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(m), (2e6 + 16e4) / 4 + 2 * 5000 + 2 * 100);
  // The ZeRO paper's plain data parallel: 16 bytes per param.
  ZeroMemoryShape plain;
  plain.trainable_elements = 1000;
  EXPECT_DOUBLE_EQ(zero_model_state_bytes_per_rank(plain), 16000);
  plain.world = 0;
  EXPECT_THROW(zero_model_state_bytes_per_rank(plain), zerolora::core::Error);
}
