// Our adapter folder against one PEFT 0.10 itself wrote (tests/golden/lora_step/single, made by
// tools/reference_lora_step.py): same tensor names, shapes and dtype; adapter_config.json with the same
// values for every key we write, and no key PEFT does not know.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/adapter_io.h"
#include "model/random_model.h"
#include "test_util.h"

using namespace zerolora;

TEST(AdapterFormat, MatchesWhatPeftWrites) {
  const std::string golden = std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/lora_step/single";
  const auto peft_config = nlohmann::json::parse(test::read_file(golden + "/adapter_config.json"));
  // stories260K's shapes (dim 64, hidden 172, 5 layers, 8 heads / 4 kv heads of 8) without needing ../shared
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<stories260K shape>";
  c.vocab_size = 512, c.hidden_size = 64, c.intermediate_size = 172, c.num_hidden_layers = 5;
  c.num_attention_heads = 8, c.num_key_value_heads = 4, c.head_dim = 8, c.tie_word_embeddings = true;
  model::LoraConfig lc = model::read_peft_adapter_config(golden);
  model::LoraLayout layout(c, lc);
  std::vector<float> params(layout.numel(), 0.5f);
  test::TempDir dir;
  model::save_peft_adapter(dir.str(), layout, params.data(), peft_config["base_model_name_or_path"]);

  const auto ours = nlohmann::json::parse(test::read_file(dir / "adapter_config.json"));
  for (const auto& [key, value] : ours.items()) {
    ASSERT_TRUE(peft_config.contains(key)) << "PEFT does not write key " << key;
    if (key == "target_modules") {
      auto a = value.get<std::vector<std::string>>(), b = peft_config[key].get<std::vector<std::string>>();
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      EXPECT_EQ(a, b);
    } else {
      EXPECT_EQ(value, peft_config[key]) << key;
    }
  }
  for (const char* key : {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                          "fan_in_fan_out", "inference_mode", "base_model_name_or_path"})
    EXPECT_TRUE(ours.contains(key)) << key;

  auto mine = io::SafetensorsFile::open((dir / "adapter_model.safetensors").string());
  auto theirs = io::SafetensorsFile::open(golden + "/adapter_init.safetensors");
  ASSERT_EQ(mine->tensors().size(), theirs->tensors().size());
  for (const auto& [name, info] : theirs->tensors()) {
    ASSERT_TRUE(mine->tensors().count(name)) << name;
    EXPECT_EQ(mine->tensors().at(name).shape, info.shape) << name;
    EXPECT_EQ(mine->tensors().at(name).dtype_name, info.dtype_name) << name;
  }
  EXPECT_EQ(mine->metadata().at("format"), "pt");
}
