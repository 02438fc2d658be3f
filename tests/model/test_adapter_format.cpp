// Our adapter folder against one PEFT 0.10 itself wrote (tests/golden/lora_step/single, made by
// tools/reference_lora_step.py): same tensor names, shapes and dtype; adapter_config.json with the same
// values for every key we write, and no key PEFT does not know.
#include <gtest/gtest.h>

#include <functional>

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

namespace {

// An adapter folder for the tiny preset written by save_peft_adapter, then its adapter_config.json edited.
struct EditedAdapter {
  test::TempDir dir;
  io::HfConfig config = model::preset_config("tiny");
  std::vector<float> params;
  explicit EditedAdapter(const std::function<void(nlohmann::json&)>& edit) {
    model::LoraConfig lc;
    lc.r = 2, lc.alpha = 32, lc.target_modules = {"v_proj", "q_proj", "down_proj"};
    model::LoraLayout layout(config, lc);
    params.resize(size_t(layout.numel()));
    for (size_t i = 0; i < params.size(); ++i) params[i] = 0.001f * float(i % 97);
    model::save_peft_adapter(dir.str(), layout, params.data(), "base");
    auto j = nlohmann::json::parse(test::read_file(dir / "adapter_config.json"));
    edit(j);
    test::write_file(dir / "adapter_config.json", j.dump(2));
  }
};

}  // namespace

// PEFT writes target_modules from a Python set: any order is the same adapter, with the same tensors in place.
TEST(AdapterFormat, TargetModulesInAnyOrder) {
  EditedAdapter as_saved([](nlohmann::json&) {});
  EditedAdapter shuffled([](nlohmann::json& j) { j["target_modules"] = {"down_proj", "q_proj", "v_proj"}; });
  const auto a = model::load_adapter_for_model(as_saved.config, as_saved.dir.str());
  const auto b = model::load_adapter_for_model(shuffled.config, shuffled.dir.str());
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.params, as_saved.params);
  EXPECT_DOUBLE_EQ(b.layout->scale(), 32.0 / 2);  // the adapter's alpha, not a default
}

// Settings that would change what the adapter computes and that zerolora does not implement are refused by
// name (they were ignored: a per-module rank_pattern/alpha_pattern ran at the global r/alpha, DoRA as plain LoRA).
TEST(AdapterFormat, RefusesSettingsItWouldIgnore) {
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> cases = {
      {[](nlohmann::json& j) { j["alpha_pattern"] = {{"q_proj", 8}}; }, "adapter_config.json:alpha_pattern"},
      {[](nlohmann::json& j) { j["rank_pattern"] = {{"v_proj", 4}}; }, "adapter_config.json:rank_pattern"},
      {[](nlohmann::json& j) { j["use_dora"] = true; }, "adapter_config.json:use_dora"},
      {[](nlohmann::json& j) { j["fan_in_fan_out"] = true; }, "adapter_config.json:fan_in_fan_out"},
      {[](nlohmann::json& j) { j["layers_to_transform"] = {0}; }, "adapter_config.json:layers_to_transform"},
      {[](nlohmann::json& j) { j["target_modules"] = ".*proj"; }, "adapter_config.json:target_modules"},
  };
  for (const auto& [edit, where] : cases) {
    EditedAdapter a(edit);
    const std::string msg = test::error_of([&] { model::read_peft_adapter_config(a.dir.str()); });
    EXPECT_NE(msg.find(where), std::string::npos) << msg;
    EXPECT_NE(msg.find("(fix: "), std::string::npos) << msg;
  }
  // PEFT's defaults for those keys are fine
  EditedAdapter defaults([](nlohmann::json& j) {
    j["alpha_pattern"] = nlohmann::json::object(), j["rank_pattern"] = nlohmann::json::object();
    j["use_dora"] = false, j["layers_to_transform"] = nullptr, j["fan_in_fan_out"] = false;
  });
  EXPECT_EQ(model::read_peft_adapter_config(defaults.dir.str()).alpha, 32);
}
