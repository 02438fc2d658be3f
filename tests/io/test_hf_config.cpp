// HF config.json: LLaMA / Mistral / Qwen2 parsing with class defaults, v4 and v5 spellings, every
// refusal, and hf_config_to_json round trips.
#include <gtest/gtest.h>

#include <functional>

#include "core/error.h"
#include "io/hf_config.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace zerolora::io {
using zerolora::test::error_of;

namespace {

using json = nlohmann::json;
const std::string kPath = "/models/m/config.json";


void expect_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: " << message;
}

// A small valid Llama config; tests change one field at a time.
json llama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "rope_scaling": null, "attention_bias": false, "mlp_bias": false, "pretraining_tp": 1,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2})");
}

// Message of parsing j with field set to value (null value = remove the field).
std::string refusal(json j, const std::string& field, const json& value) {
  if (value.is_null())
    j.erase(field);
  else
    j[field] = value;
  return error_of([&] { parse_hf_config(j, kPath); });
}

TEST(HfConfig, Stories260K) {
  ZL_REQUIRE_SHARED(path, "models/stories260K-hf/config.json");
  HfConfig c = load_hf_config(path);
  EXPECT_EQ(c.path, path);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qkv_bias);
}

TEST(HfConfig, Stories260KUntied) {
  ZL_REQUIRE_SHARED(path, "models/stories260K-hf-untied/config.json");
  HfConfig c = load_hf_config(path);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 4);
}

TEST(HfConfig, LlamaClassDefaults) {
  HfConfig c = parse_hf_config(json::parse(R"({"architectures": ["LlamaForCausalLM"]})"), kPath);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_key_value_heads, 32);  // absent -> num_attention_heads
  EXPECT_EQ(c.head_dim, 128);            // absent -> hidden / heads
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.sliding_window, 0);
  // null means the same as absent for num_key_value_heads and head_dim
  json j = llama();
  j["num_key_value_heads"] = nullptr;
  j["head_dim"] = nullptr;
  HfConfig n = parse_hf_config(j, kPath);
  EXPECT_EQ(n.num_key_value_heads, 4);
  EXPECT_EQ(n.head_dim, 16);
}

TEST(HfConfig, Llama31RopeAndEosList) {
  json j = llama();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = json::parse(R"({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"})");
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = 128000;
  j["head_dim"] = 32;  // explicit head_dim need not equal hidden / heads
  HfConfig c = parse_hf_config(j, kPath);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(HfConfig, RopeScalingSpellings) {
  json j = llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  HfConfig linear = parse_hf_config(j, kPath);
  EXPECT_EQ(linear.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(linear.rope_scaling.factor, 2.0);
  j["rope_scaling"] = {{"type", "linear"}, {"rope_type", "linear"}, {"factor", 4.0}};
  EXPECT_DOUBLE_EQ(parse_hf_config(j, kPath).rope_scaling.factor, 4.0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse_hf_config(j, kPath).rope_scaling, RopeScaling{});
}

TEST(HfConfig, TransformersV5Spelling) {
  json j = llama();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1000000.0}};
  HfConfig c = parse_hf_config(j, kPath);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(c.torch_dtype, "float16");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250.0}};
  HfConfig d = parse_hf_config(j, kPath);
  EXPECT_DOUBLE_EQ(d.rope_theta, 250.0);
  EXPECT_EQ(d.rope_scaling.type, "");
}

TEST(HfConfig, Mistral) {
  json j = json::parse(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64,
                          "num_attention_heads": 8, "num_hidden_layers": 2, "vocab_size": 100})");
  HfConfig c = parse_hf_config(j, kPath);
  EXPECT_EQ(c.num_key_value_heads, 8);  // MistralConfig default when absent
  EXPECT_EQ(c.sliding_window, 4096);  // MistralConfig default when absent
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_FALSE(c.qkv_bias);
  j["sliding_window"] = nullptr;
  j["num_key_value_heads"] = nullptr;
  HfConfig n = parse_hf_config(j, kPath);
  EXPECT_EQ(n.sliding_window, 0);
  EXPECT_EQ(n.num_key_value_heads, 8);  // null -> num_attention_heads
  j["num_attention_heads"] = 4;
  EXPECT_EQ(parse_hf_config(j, kPath).num_key_value_heads, 4);
  j["sliding_window"] = 32768;
  EXPECT_EQ(parse_hf_config(j, kPath).sliding_window, 32768);
}

TEST(HfConfig, MistralDefaultKvHeadsMustDivideHeads) {
  // MistralConfig's default num_key_value_heads is 8: with 4 query heads that is refused, not guessed.
  json j = json::parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_attention_heads": 4})");
  expect_contains(error_of([&] { parse_hf_config(j, kPath); }), {kPath + ":num_key_value_heads", "8 does not divide"});
  j["num_attention_heads"] = 16;
  EXPECT_EQ(parse_hf_config(j, kPath).num_key_value_heads, 8);
}

TEST(HfConfig, Qwen2) {
  json j = json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
      "intermediate_size": 4864, "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
      "max_position_embeddings": 131072, "max_window_layers": 24, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "sliding_window": 131072, "use_sliding_window": false, "tie_word_embeddings": true, "vocab_size": 151936,
      "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151643, "attention_dropout": 0.0})");
  HfConfig c = parse_hf_config(j, kPath);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window false
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.bos_token_id, 151643);
  j["use_sliding_window"] = true;
  EXPECT_EQ(parse_hf_config(j, kPath).sliding_window, 131072);
  j.erase("bos_token_id");
  j.erase("eos_token_id");
  HfConfig no_ids = parse_hf_config(j, kPath);  // Qwen2Config has no token id defaults
  EXPECT_EQ(no_ids.bos_token_id, -1);
  EXPECT_TRUE(no_ids.eos_token_ids.empty());
}

TEST(HfConfig, LlamaAttentionBias) {
  json j = llama();
  j["attention_bias"] = true;
  HfConfig c = parse_hf_config(j, kPath);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qkv_bias);
}

// ---------------------------------------------------------------------------------------------
// Refusals: one per rule, each naming file:field and the problem

TEST(HfConfigErrors, MissingFile) {
  test::TempDir dir;
  const std::string path = (dir / "config.json").string();
  expect_contains(error_of([&] { load_hf_config(path); }), {path, "file not found", "config.json"});
}

TEST(HfConfigErrors, InvalidJson) {
  test::TempDir dir;
  const std::string path = (dir / "config.json").string();
  test::write_file(path, "{\"architectures\": [");
  expect_contains(error_of([&] { load_hf_config(path); }), {path, "not valid JSON"});
}

TEST(HfConfigErrors, UnknownArchitecture) {
  expect_contains(refusal(llama(), "architectures", {"GPT2LMHeadModel"}),
                  {kPath + ":architectures", "'GPT2LMHeadModel' is not supported",
                   "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"});
  json j = llama();
  j.erase("architectures");
  j["model_type"] = "gpt2";
  expect_contains(error_of([&] { parse_hf_config(j, kPath); }), {kPath + ":architectures", "'gpt2' is not supported"});
}

TEST(HfConfigErrors, ModelTypeDisagrees) {
  expect_contains(refusal(llama(), "model_type", "qwen2"), {kPath + ":model_type", "'qwen2'", "LlamaForCausalLM"});
}

TEST(HfConfigErrors, HiddenActNotSilu) {
  expect_contains(refusal(llama(), "hidden_act", "gelu"), {kPath + ":hidden_act", "'gelu' is not supported"});
}

TEST(HfConfigErrors, KvHeadsNotDividingHeads) {
  expect_contains(refusal(llama(), "num_key_value_heads", 3), {kPath + ":num_key_value_heads", "3 does not divide"});
}

TEST(HfConfigErrors, HeadsNotDividingHidden) {
  expect_contains(refusal(llama(), "num_attention_heads", 6), {kPath + ":num_attention_heads", "does not divide hidden_size"});
}

TEST(HfConfigErrors, UnsupportedRopeTypes) {
  for (const char* type : {"dynamic", "yarn", "longrope"}) {
    expect_contains(refusal(llama(), "rope_scaling", {{"rope_type", type}, {"factor", 4.0}}),
                    {kPath + ":rope_scaling.rope_type", std::string("'") + type + "' is not supported", "linear, llama3"});
  }
}

TEST(HfConfigErrors, RopeScalingIncomplete) {
  expect_contains(refusal(llama(), "rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}),
                  {kPath + ":rope_scaling.low_freq_factor", "is required"});
  expect_contains(refusal(llama(), "rope_scaling", {{"factor", 8.0}}), {kPath + ":rope_scaling", "no rope_type"});
  expect_contains(refusal(llama(), "rope_scaling", {{"type", "linear"}, {"factor", 2.0}, {"beta_fast", 32}}),
                  {kPath + ":rope_scaling.beta_fast", "not used by rope type 'linear'"});
}

TEST(HfConfigErrors, RopeParametersDisagreeWithRopeTheta) {
  json j = llama();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  expect_contains(error_of([&] { parse_hf_config(j, kPath); }), {kPath + ":rope_parameters", "disagrees"});
}

TEST(HfConfigErrors, MlpBias) {
  expect_contains(refusal(llama(), "mlp_bias", true), {kPath + ":mlp_bias", "not supported"});
}

TEST(HfConfigErrors, PretrainingTp) {
  expect_contains(refusal(llama(), "pretraining_tp", 2), {kPath + ":pretraining_tp", "not supported"});
}

TEST(HfConfigErrors, AttentionBiasOutsideLlama) {
  json j = llama();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  expect_contains(refusal(j, "attention_bias", true), {kPath + ":attention_bias", "MistralForCausalLM"});
}

TEST(HfConfigErrors, QuantizedCheckpoint) {
  expect_contains(refusal(llama(), "quantization_config", {{"quant_method", "gptq"}}),
                  {kPath + ":quantization_config", "not supported"});
}

TEST(HfConfigErrors, AttentionDropout) {
  expect_contains(refusal(llama(), "attention_dropout", 0.1), {kPath + ":attention_dropout", "not supported"});
}

TEST(HfConfigErrors, TorchDtype) {
  expect_contains(refusal(llama(), "torch_dtype", "int8"), {kPath + ":torch_dtype", "'int8'"});
  json j = llama();
  j["dtype"] = "float16";
  expect_contains(error_of([&] { parse_hf_config(j, kPath); }), {kPath + ":dtype", "disagrees with torch_dtype"});
}

TEST(HfConfigErrors, WrongTypes) {
  expect_contains(refusal(llama(), "hidden_size", "64"), {kPath + ":hidden_size", "must be an integer"});
  expect_contains(refusal(llama(), "hidden_size", 0), {kPath + ":hidden_size", "must be positive"});
  expect_contains(refusal(llama(), "tie_word_embeddings", "yes"), {kPath + ":tie_word_embeddings", "true or false"});
  expect_contains(refusal(llama(), "eos_token_id", {1, "x"}), {kPath + ":eos_token_id", "list of integers"});
  expect_contains(refusal(llama(), "head_dim", 15), {kPath + ":head_dim", "even"});
}

// ---------------------------------------------------------------------------------------------
// Writing

TEST(HfConfigWrite, RoundTripsEveryArchitecture) {
  json llama31 = llama();
  llama31["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  llama31["eos_token_id"] = {128001, 128009};
  llama31["attention_bias"] = true;
  json linear = llama();
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  linear["tie_word_embeddings"] = true;
  json mistral = json::parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64,
      "num_attention_heads": 8, "sliding_window": 4096, "torch_dtype": "bfloat16"})");
  json mistral_no_window = mistral;
  mistral_no_window["sliding_window"] = nullptr;
  json qwen = json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 3, "use_sliding_window": true, "sliding_window": 2048,
      "bos_token_id": null, "eos_token_id": 151645})");
  json qwen_no_window = qwen;
  qwen_no_window["use_sliding_window"] = false;
  for (const json& source : {llama(), llama31, linear, mistral, mistral_no_window, qwen, qwen_no_window}) {
    HfConfig c = parse_hf_config(source, kPath);
    json written = hf_config_to_json(c);
    HfConfig back = parse_hf_config(written, kPath);
    EXPECT_EQ(back, c) << written.dump();
    EXPECT_EQ(written["architectures"], json::array({c.architecture}));
    EXPECT_EQ(written["model_type"], c.model_type);
    EXPECT_EQ(written["hidden_act"], "silu");
  }
}

TEST(HfConfigWrite, WritesTheKeysHfClassesRead) {
  HfConfig c = parse_hf_config(llama(), kPath);
  json j = hf_config_to_json(c);
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                          "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id", "torch_dtype",
                          "attention_bias", "mlp_bias", "pretraining_tp"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["eos_token_id"], 2);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  // linear scaling in the {type, factor} form that every transformers version reads
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 2.0;
  EXPECT_EQ(hf_config_to_json(c)["rope_scaling"], json({{"type", "linear"}, {"factor", 2.0}}));

  json q = hf_config_to_json(parse_hf_config(json::parse(R"({"architectures": ["Qwen2ForCausalLM"]})"), kPath));
  EXPECT_EQ(q["use_sliding_window"], false);
  EXPECT_FALSE(q.contains("attention_bias"));
  EXPECT_TRUE(q["bos_token_id"].is_null());
}

// Which layers slide: Mistral every layer; Qwen2 with use_sliding_window the layers i >= max_window_layers
// (default 28), or as layer_types says; written back so that it reads the same.
TEST(HfConfig, SlidingLayers) {
  json q = json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 4, "use_sliding_window": true, "sliding_window": 16,
      "max_window_layers": 2})");
  HfConfig c = parse_hf_config(q, kPath);
  EXPECT_EQ(c.sliding_window, 16);
  EXPECT_EQ(c.sliding_layers, (std::vector<bool>{false, false, true, true}));
  for (int64_t l = 0; l < 4; ++l) EXPECT_EQ(layer_sliding_window(c, l), l >= 2 ? 16 : 0) << l;
  EXPECT_EQ(hf_config_to_json(c)["max_window_layers"], 2);
  EXPECT_EQ(parse_hf_config(hf_config_to_json(c), kPath), c);
  q.erase("max_window_layers");  // Qwen2Config's default 28: no layer of 4 slides
  c = parse_hf_config(q, kPath);
  for (int64_t l = 0; l < 4; ++l) EXPECT_EQ(layer_sliding_window(c, l), 0) << l;
  EXPECT_EQ(parse_hf_config(hf_config_to_json(c), kPath), c);
  q["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  c = parse_hf_config(q, kPath);
  EXPECT_EQ(c.sliding_layers, (std::vector<bool>{true, false, true, false}));
  EXPECT_EQ(parse_hf_config(hf_config_to_json(c), kPath), c);
  json m = json::parse(R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_attention_heads": 8,
      "num_hidden_layers": 2, "sliding_window": 8})");
  c = parse_hf_config(m, kPath);
  EXPECT_TRUE(c.sliding_layers.empty());
  EXPECT_EQ(layer_sliding_window(c, 0), 8);
  EXPECT_EQ(layer_sliding_window(c, 1), 8);
  q["max_window_layers"] = -1;
  q.erase("layer_types");
  expect_contains(error_of([&] { parse_hf_config(q, kPath); }), {kPath + ":max_window_layers", "negative"});
}

}  // namespace
}  // namespace zerolora::io
