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
  TempDir dir;
  auto rows = nlohmann::json::parse(read_file(data));
  nlohmann::json eval_rows = nlohmann::json::array();
  for (size_t i = 0; i < 32; ++i) eval_rows.push_back(rows[i]);
  const std::string eval_path = (dir / "eval.json").string();
  write_file(eval_path, eval_rows.dump());
  auto final_eval = [&](const std::string& name, const std::string& precision) {
    const std::string out = (dir / name).string();
    std::string log;
    const std::string cmd = zerolora_binary() + " train --model_name_or_path " + model + " --data_path " + data +
                            " --eval_data_path " + eval_path + " --output_dir " + out +
                            " --max_steps 100 --per_device_train_batch_size 4 --learning_rate 2e-3 --model_max_length 160"
                            " --padding longest --lora_r 8 --lora_alpha 16 --lora_dropout 0.05 --lora_target_modules"
                            " q_proj k_proj v_proj o_proj gate_proj up_proj down_proj --logging_steps 10"
                            " --save_strategy no --num_threads 2 " + precision;
    EXPECT_EQ(run_command(cmd, &log), 0) << log;
    const auto state = read_json_file(fs::path(out) / "trainer_state.json");
    double eval = NAN;
    for (const auto& e : state["log_history"])
      if (e.contains("eval_loss")) eval = e["eval_loss"].get<double>();
    return eval;
  };
  const double bf16 = final_eval("bf16", "--bf16 True");
  const double qlora = final_eval("qlora", "--q_lora True");
  ASSERT_TRUE(std::isfinite(bf16) && std::isfinite(qlora));
  EXPECT_LT(std::abs(qlora - bf16) / bf16, 0.02) << "bf16 " << bf16 << " qlora " << qlora;
  std::printf("eval loss after 100 steps: bf16 %.5f, qlora %.5f (%.2f%%)\n", bf16, qlora, 100 * (qlora - bf16) / bf16);
}
