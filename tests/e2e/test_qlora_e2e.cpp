// QLoRA against bf16 LoRA on stories260K + FastChat's dummy data, same flags: the evaluation loss after
// fine-tuning must be within 2% (issue 8's quality bar), as the mean over three seeds of runs trained to
// convergence (250 steps, two epochs). On this 260K-parameter model (hidden 64) NF4 costs the base model 8 %
// of its eval loss (3.387 -> 3.664) and single 100-step runs swing from -2 % to +7 % with the seed (mean +3 %);
// at 250 steps the seeds gave +2.2 %, -1.8 %, -1.7 % (mean -0.4 %).
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
  double bf16 = 0, qlora = 0;
  for (int seed : {1, 3, 42}) {
    const std::string flags = "--max_steps 250 --seed " + std::to_string(seed);
    const double b = runs.final_eval("bf16_" + std::to_string(seed), "--bf16 True", flags);
    const double q = runs.final_eval("qlora_" + std::to_string(seed), "--q_lora True", flags);
    ASSERT_TRUE(std::isfinite(b) && std::isfinite(q));
    std::printf("seed %d: eval loss bf16 %.5f, qlora %.5f (%+.2f%%)\n", seed, b, q, 100 * (q - b) / b);
    bf16 += b / 3, qlora += q / 3;
  }
  EXPECT_LT(std::abs(qlora - bf16) / bf16, 0.02) << "mean bf16 " << bf16 << " qlora " << qlora;
  std::printf("mean eval loss after 250 steps: bf16 %.5f, qlora %.5f (%+.2f%%)\n", bf16, qlora,
              100 * (qlora - bf16) / bf16);
}
