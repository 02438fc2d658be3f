// Shared set-up for the end-to-end tests: a tiny random model with a trained byte-level BPE tokenizer
// and a synthetic conversation file, made in a temp folder (no ../shared needed).
#pragma once
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "model/random_model.h"
#include "test_util.h"
#include "tokenizer/bpe_trainer.h"
#include "train/demo.h"

namespace zerolora::test {

struct TinyRun {
  TempDir dir;
  std::string model, data;
  TinyRun(size_t samples = 64) {
    model = (dir / "model").string();
    data = (dir / "data.json").string();
    const std::string json = train::synthetic_conversations_json(samples, 5);
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

}  // namespace zerolora::test
