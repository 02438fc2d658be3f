// What HF Trainer + PEFT leave in an output folder beside the adapter, as zerolora writes it: the tokenizer
// files of a checkpoint (FastChat's pad_token = unk_token, saved by the Trainer) and PEFT's README.md model card.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "model/adapter_io.h"
#include "test_util.h"
#include "train/training_checkpoint.h"

using namespace zerolora;
using nlohmann::json;
using zerolora::test::read_file;
using zerolora::test::TempDir;
using zerolora::test::write_file;
namespace fs = std::filesystem;

namespace {

json read_json(const fs::path& p) { return json::parse(read_file(p)); }

}  // namespace

// stories260K's files (../shared/models/stories260K-hf): "pad_token": null in the config, none in the map.
TEST(TokenizerCopy, PadTokenIsTheUnkTokenAsHfSavesIt) {
  TempDir dir;
  fs::create_directories(dir / "model");
  fs::create_directories(dir / "ckpt");
  write_file(dir / "model" / "tokenizer.model", "spm bytes");
  write_file(dir / "model" / "tokenizer_config.json",
             R"({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "pad_token": null, "legacy": true, "model_max_length": 512})");
  write_file(dir / "model" / "special_tokens_map.json", R"({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})");
  train::copy_tokenizer_files((dir / "model").string(), (dir / "ckpt").string());
  EXPECT_EQ(read_file(dir / "ckpt" / "tokenizer.model"), "spm bytes");
  const json config = read_json(dir / "ckpt" / "tokenizer_config.json");
  EXPECT_EQ(config["pad_token"], "<unk>");
  EXPECT_EQ(config["legacy"], true);  // the rest unchanged
  EXPECT_EQ(config["model_max_length"], 512);
  const json map = read_json(dir / "ckpt" / "special_tokens_map.json");
  EXPECT_EQ(map, json::parse(R"({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})"));
  // HF's layout: indent 2, sorted keys, a trailing newline
  const std::string text = read_file(dir / "ckpt" / "special_tokens_map.json");
  EXPECT_EQ(text, "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"pad_token\": \"<unk>\",\n"
                  "  \"unk_token\": \"<unk>\"\n}\n");
}

// Newer transformers write AddedToken dicts; the pad entry takes the unk entry's form. No special_tokens_map.json
// in the model folder: save_pretrained writes one, from the config's special tokens.
TEST(TokenizerCopy, AddedTokenFormAndMissingMap) {
  TempDir dir;
  fs::create_directories(dir / "model");
  fs::create_directories(dir / "ckpt");
  const json unk = {{"content", "<unk>"}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
                    {"single_word", false}};
  json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", unk}};
  write_file(dir / "model" / "tokenizer_config.json", config.dump());
  train::copy_tokenizer_files((dir / "model").string(), (dir / "ckpt").string());
  EXPECT_EQ(read_json(dir / "ckpt" / "tokenizer_config.json")["pad_token"], unk);
  const json map = read_json(dir / "ckpt" / "special_tokens_map.json");
  EXPECT_EQ(map["pad_token"], unk);
  EXPECT_EQ(map["bos_token"], "<s>");
  EXPECT_EQ(map["unk_token"], unk);
}

// Llama 3 has no unk token: FastChat's pad_token = unk_token leaves None, and nothing is changed; files that are
// not valid JSON are copied as they are (the save does not fail over them).
TEST(TokenizerCopy, NoUnkTokenOrUnreadableJsonCopiesUnchanged) {
  TempDir dir;
  fs::create_directories(dir / "model");
  fs::create_directories(dir / "ckpt");
  const std::string config = R"({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})";
  write_file(dir / "model" / "tokenizer_config.json", config);
  train::copy_tokenizer_files((dir / "model").string(), (dir / "ckpt").string());
  EXPECT_EQ(read_file(dir / "ckpt" / "tokenizer_config.json"), config);
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "special_tokens_map.json"));

  write_file(dir / "model" / "tokenizer_config.json", "{\"unk_token\": ");
  write_file(dir / "model" / "special_tokens_map.json", "not json");
  train::copy_tokenizer_files((dir / "model").string(), (dir / "ckpt").string());
  EXPECT_EQ(read_file(dir / "ckpt" / "tokenizer_config.json"), "{\"unk_token\": ");
  EXPECT_EQ(read_file(dir / "ckpt" / "special_tokens_map.json"), "not json");
}

TEST(TokenizerCopy, Stories260KFromShared) {
  ZL_REQUIRE_SHARED(model, "models/stories260K-hf");
  TempDir dir;
  train::copy_tokenizer_files(model, dir.str());
  EXPECT_EQ(read_json(dir / "tokenizer_config.json")["pad_token"], "<unk>");
  EXPECT_EQ(read_json(dir / "special_tokens_map.json")["pad_token"], "<unk>");
}

// PEFT's card: YAML front matter with base_model and library_name, which the Hub and PEFT read.
TEST(ModelCard, FrontMatterAsPeftWritesIt) {
  const std::string card = model::peft_model_card("/models/llama-7b");
  EXPECT_EQ(card.rfind("---\nbase_model: /models/llama-7b\nlibrary_name: peft\n---\n", 0), 0u) << card;
  EXPECT_NE(card.find("# Model Card for Model ID"), std::string::npos);
  // values YAML would misread are quoted
  EXPECT_NE(model::peft_model_card("a: b").find("base_model: \"a: b\"\n"), std::string::npos);
  EXPECT_NE(model::peft_model_card("true").find("base_model: \"true\"\n"), std::string::npos);
  EXPECT_NE(model::peft_model_card("#x").find("base_model: \"#x\"\n"), std::string::npos);
  EXPECT_NE(model::peft_model_card("1.5").find("base_model: \"1.5\"\n"), std::string::npos);
  EXPECT_NE(model::peft_model_card("meta-llama/Llama-2-7b-hf").find("base_model: meta-llama/Llama-2-7b-hf\n"),
            std::string::npos);
  EXPECT_EQ(model::peft_model_card("").find("base_model:"), std::string::npos);
}
