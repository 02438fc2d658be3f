// Shared set-up for the end-to-end tests: a tiny random model with a trained byte-level BPE tokenizer
// and a synthetic conversation file, made in a temp folder (no ../shared needed).
#pragma once
#include <cmath>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "model/random_model.h"
#include "test_util.h"
#include "tokenizer/bpe_trainer.h"
#include "cli/demo.h"

namespace zerolora::test {

struct TinyRun {
  TempDir dir;
  std::string model, data;
  TinyRun(size_t samples = 64) {
    model = (dir / "model").string();
    data = (dir / "data.json").string();
    const std::string json = cli::synthetic_conversations_json(samples, 5);
    write_file(data, json);
    std::vector<std::string> corpus;
    for (const auto& r : nlohmann::json::parse(json))
      for (const auto& m : r["conversations"]) corpus.push_back(m["value"].get<std::string>());
    std::filesystem::create_directories(model);
    tokenizer::BpeTrainerOptions bo;
    bo.vocab_size = 320;
    const auto tok = tokenizer::train_byte_level_bpe(corpus, bo);
    write_file(std::filesystem::path(model) / "tokenizer.json", tok.dump());
    io::HfConfig c = model::preset_config("tiny");
    c.vocab_size = int64_t(tok["model"]["vocab"].size());  // every id the model emits decodes
    model::RandomInit init;
    init.seed = 3;
    init.init_std = 0.05;
    model::write_random_model(model, c, init, core::DType::F32);
  }
  // the train command line for this model and data
  std::string train_cmd(const std::string& out, const std::string& extra) const {
    return zerolora_binary() + " train --model_name_or_path " + model + " --data_path " + data + " --output_dir " +
           out + " --conv_template chatml --model_max_length 64 --padding longest --lora_dropout 0 " +
           "--learning_rate 5e-3 --logging_steps 1 --num_threads 1 " + extra;
  }
};

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
  return nlohmann::json::parse(read_file(p));
}

// stories260K fine-tuned for 100 steps on FastChat's dummy data with one precision flag, evaluated on the
// first 32 conversations: the comparison the QLoRA and fp16 quality bars use. Needs ../shared.
struct Stories260KPrecisionRuns {
  std::string model, data;
  TempDir dir;
  std::string eval_path;
  Stories260KPrecisionRuns(std::string model_dir, std::string data_path)
      : model(std::move(model_dir)), data(std::move(data_path)) {
    auto rows = nlohmann::json::parse(read_file(data));
    nlohmann::json eval_rows = nlohmann::json::array();
    for (size_t i = 0; i < 32; ++i) eval_rows.push_back(rows[i]);
    eval_path = (dir / "eval.json").string();
    write_file(eval_path, eval_rows.dump());
  }
  // the final evaluation loss of a run with `precision` ("", "--bf16 True", "--q_lora True", "--fp16 True");
  // `extra` flags come last (they override the defaults here: --max_steps, --seed)
  double final_eval(const std::string& name, const std::string& precision, const std::string& extra = "") const {
    const std::string out = (dir / name).string();
    std::string log;
    EXPECT_EQ(run_command(zerolora_binary() + " train --model_name_or_path " + model + " --data_path " + data +
                              " --eval_data_path " + eval_path + " --output_dir " + out +
                              " --max_steps 100 --per_device_train_batch_size 4 --learning_rate 2e-3"
                              " --model_max_length 160 --padding longest --lora_r 8 --lora_alpha 16"
                              " --lora_dropout 0.05 --lora_target_modules q_proj k_proj v_proj o_proj gate_proj"
                              " up_proj down_proj --logging_steps 10 --save_strategy no --num_threads 2 " + precision + " " + extra,
                          &log),
              0)
        << log;
    const auto state = read_json_file(std::filesystem::path(out) / "trainer_state.json");
    double eval = NAN;
    for (const auto& e : state["log_history"])
      if (e.contains("eval_loss")) eval = e["eval_loss"].get<double>();
    return eval;
  }
};

}  // namespace zerolora::test
