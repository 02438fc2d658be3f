// Sliding-window models (Mistral, Qwen2 with use_sliding_window): zerolora computes full causal attention, which
// equals the windowed model only while every query sees at most sliding_window tokens. Longer sequences are
// refused with an error, not computed wrongly (a tiny Mistral with window 8 over 40 tokens gave loss 6.2285 where
// HF gives 6.2190 before this check).
#include <gtest/gtest.h>

#include "model_test_util.h"

using namespace zerolora;
using namespace zerolora::test;

TEST(AttentionSpan, LongerThanTheSlidingWindowIsRefusedNotComputed) {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny mistral>";
  c.sliding_window = 8;
  auto w = random_weights(c, core::DType::F32, core::DType::F32);
  model::LlamaModel<float> m(w, nullptr);
  TestBatch fits = make_batch(8, 8, int32_t(c.vocab_size), 1);
  std::vector<float> logits(size_t(fits.B * fits.T * c.vocab_size));
  EXPECT_NO_THROW(m.forward_logits(fits.input(), nullptr, logits.data()));
  TestBatch longer = make_batch(40, 40, int32_t(c.vocab_size), 1);
  logits.resize(size_t(longer.B * longer.T * c.vocab_size));
  try {
    m.forward_logits(longer.input(), nullptr, logits.data());
    FAIL() << "a 40-token sequence under an 8-token window must be refused";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sliding_window 8"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(model::check_attention_span(c, 8, "x", "y"));
  EXPECT_THROW(model::check_attention_span(c, 9, "--model_max_length", "y"), core::Error);
  c.sliding_window = 0;  // no window: any span
  EXPECT_NO_THROW(model::check_attention_span(c, 1 << 20, "x", "y"));
}
