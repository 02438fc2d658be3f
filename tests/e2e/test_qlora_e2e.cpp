// QLoRA against bf16 LoRA on stories260K + FastChat's dummy data, same flags and seed: the evaluation loss
// after fine-tuning must be within 2% (issue 8's quality bar).
#include <gtest/gtest.h>

#include <cmath>

#include "e2e_util.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

TEST(QloraE2E, EvalLossWithinTwoPercentOfBf16) {
  ZL_REQUIRE_SHARED(model, "models/stories260K-hf");
  ZL_REQUIRE_SHARED(data, "data/dummy_conversation.json");
  const Stories260KPrecisionRuns runs(model, data);
  const double bf16 = runs.final_eval("bf16", "--bf16 True");
  const double qlora = runs.final_eval("qlora", "--q_lora True");
  ASSERT_TRUE(std::isfinite(bf16) && std::isfinite(qlora));
  EXPECT_LT(std::abs(qlora - bf16) / bf16, 0.02) << "bf16 " << bf16 << " qlora " << qlora;
  std::printf("eval loss after 100 steps: bf16 %.5f, qlora %.5f (%.2f%%)\n", bf16, qlora, 100 * (qlora - bf16) / bf16);
}
