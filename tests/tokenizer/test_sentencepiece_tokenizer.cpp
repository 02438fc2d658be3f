// SentencePiece with HF slow LlamaTokenizer behaviour, both legacy modes, against transformers 4.36
// (goldens from tools/tokenizer_reference.py): a tiny committed model always, the Llama-2 and
// stories260K models when ../shared is present.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/sentencepiece_model_proto.h"
#include "tokenizer/sentencepiece_tokenizer.h"

using namespace zerolora;
using namespace zerolora::tokenizer;
using nlohmann::json;

namespace {

const std::string kGoldenDir = std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/tokenizer/";
const std::string kTinyModel = kGoldenDir + "tiny_llama_sp.model";

json read_golden(const std::string& name) {
  std::ifstream in(kGoldenDir + name);
  EXPECT_TRUE(in.good()) << name;
  return json::parse(in);
}

std::unique_ptr<SentencePieceTokenizer> load_model(const std::string& path, bool legacy) {
  SentencePieceConfig config;
  config.legacy = legacy;
  return std::make_unique<SentencePieceTokenizer>(test::read_file(path), config, path);
}

void expect_matches_golden(const std::string& model_path, const json& model_golden) {
  for (bool legacy : {true, false}) {
    auto tok = load_model(model_path, legacy);
    int failures = 0;
    for (const json& c : model_golden[legacy ? "legacy" : "non_legacy"]) {
      const std::string text = c["text"].get<std::string>();
      const auto ids = tok->encode(text, true);
      EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>())
          << (legacy ? "legacy" : "non-legacy") << " text: " << json(text).dump();
      if (ids != c["ids"].get<std::vector<int32_t>>() && ++failures > 5) break;
    }
  }
}

}  // namespace

TEST(SentencePieceTokenizer, TinyModelMatchesTransformersSlowTokenizer) {
  expect_matches_golden(kTinyModel, read_golden("sentencepiece_slow_llama.json")["models"]["tiny"]);
}

TEST(SentencePieceTokenizer, Llama2MatchesTransformersSlowTokenizer) {
  ZL_REQUIRE_SHARED(path, "models/llama2-tokenizer/tokenizer.model");
  expect_matches_golden(path, read_golden("sentencepiece_slow_llama.json")["models"]["llama2"]);
}

TEST(SentencePieceTokenizer, Stories260KMatchesTransformersSlowTokenizer) {
  ZL_REQUIRE_SHARED(path, "models/stories260K-hf/tokenizer.model");
  expect_matches_golden(path, read_golden("sentencepiece_slow_llama.json")["models"]["stories260K"]);
}

TEST(SentencePieceTokenizer, Llama2LegacyModesDifferAfterSpecialTokens) {
  // fastchat-spec §2.5: after "</s>", legacy gives "▁US ER :" (3148 1001 29901), non-legacy "USER :" (11889 29901)
  ZL_REQUIRE_SHARED(path, "models/llama2-tokenizer/tokenizer.model");
  auto legacy = load_model(path, true);
  auto non_legacy = load_model(path, false);
  EXPECT_EQ(legacy->encode("Hi</s>USER:", true), (std::vector<int32_t>{1, 6324, 2, 3148, 1001, 29901}));
  EXPECT_EQ(non_legacy->encode("Hi</s>USER:", true), (std::vector<int32_t>{1, 6324, 2, 11889, 29901}));
  // the instruction prefix ends with a lone "▁" (29871) that the answer's first piece absorbs in context
  const auto prefix = legacy->encode("USER: Hi ASSISTANT: ", true);
  EXPECT_EQ(prefix.back(), 29871);
  EXPECT_EQ(legacy->bos_id(), 1);
  EXPECT_EQ(legacy->eos_id(), 2);
  EXPECT_EQ(legacy->unk_id(), 0);
  EXPECT_EQ(legacy->pad_id(), 0);  // FastChat pads with unk
  EXPECT_EQ(legacy->vocab_size(), 32000);
  EXPECT_EQ(legacy->token_text(29871), "\xE2\x96\x81");
  EXPECT_EQ(legacy->token_bytes(13), "\n");  // <0x0A>
  EXPECT_TRUE(legacy->is_special(2));
  EXPECT_FALSE(legacy->is_special(29871));
}

TEST(SentencePieceTokenizer, DecodeInvertsEncodeInBothModes) {
  const std::vector<std::string> texts = {"Hello world", " leading space", "a</s>b", "a </s> b", "USER: x</s>USER: y",
                                          "new\nline \xE4\xBD\xA0\xE5\xA5\xBD", "</s>starts special"};
  for (bool legacy : {true, false}) {
    auto tok = load_model(kTinyModel, legacy);
    for (const auto& text : texts) {
      EXPECT_EQ(tok->decode(tok->encode(text, true), false), "<s>" + text) << text << " legacy " << legacy;
    }
    EXPECT_EQ(tok->decode(tok->encode("a</s>b", true), true), "ab");
  }
}

TEST(SentencePieceTokenizer, ConfigControlsModeBosAndSpecialTokens) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.model", test::read_file(kTinyModel));
  test::write_file(dir / "tokenizer_config.json", R"({
    "legacy": false, "add_bos_token": true, "add_eos_token": true,
    "bos_token": {"content": "<s>", "__type": "AddedToken"}, "pad_token": null,
    "added_tokens_decoder": {"600": {"content": "<|extra|>", "special": true}}
  })");
  auto tok = load_tokenizer(dir.str());
  ASSERT_TRUE(tok->is_sentencepiece());
  EXPECT_FALSE(tok->legacy());
  EXPECT_EQ(tok->vocab_size(), 601);
  const auto ids = tok->encode("x<|extra|>y", true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);  // add_eos_token
  EXPECT_NE(std::find(ids.begin(), ids.end(), 600), ids.end());
  EXPECT_EQ(tok->token_id("<|extra|>"), 600);
  EXPECT_TRUE(tok->encode("x", false).size() >= 1);
  EXPECT_NE(tok->encode("x", false).front(), 1);

  // without tokenizer_config.json: legacy, BOS only
  std::filesystem::remove(dir / "tokenizer_config.json");
  auto plain = load_tokenizer(dir.str());
  EXPECT_TRUE(plain->legacy());
  EXPECT_EQ(plain->encode("x", true).front(), 1);
  EXPECT_NE(plain->encode("x", true).back(), 2);
}

TEST(SentencePieceTokenizer, DummyPrefixRewriteKeepsTheRestOfTheModel) {
  const std::string model = test::read_file(kTinyModel);
  const std::string rewritten = sentencepiece_model_without_dummy_prefix(model, kTinyModel);
  sentencepiece::SentencePieceProcessor with, without;
  ASSERT_TRUE(with.LoadFromSerializedProto(model).ok());
  ASSERT_TRUE(without.LoadFromSerializedProto(rewritten).ok());
  EXPECT_EQ(with.GetPieceSize(), without.GetPieceSize());
  std::vector<std::string> a, b;
  ASSERT_TRUE(with.Encode("hello", &a).ok());
  ASSERT_TRUE(without.Encode("hello", &b).ok());
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(a.front().rfind("\xE2\x96\x81", 0), 0u);  // "▁" prefix
  EXPECT_NE(b.front().rfind("\xE2\x96\x81", 0), 0u);  // none
  EXPECT_THROW(sentencepiece_model_without_dummy_prefix("\xFF\xFF\xFF", "bad.model"), core::Error);
}

TEST(SentencePieceTokenizer, MissingOrBrokenFilesGiveClearErrors) {
  test::TempDir dir;
  try {
    load_tokenizer(dir.str());
    ADD_FAILURE();
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither tokenizer.model nor tokenizer.json"), std::string::npos);
  }
  test::write_file(dir / "tokenizer.model", "not a model");
  EXPECT_THROW(load_tokenizer(dir.str()), core::Error);
  test::write_file(dir / "tokenizer.model", test::read_file(kTinyModel));
  test::write_file(dir / "tokenizer_config.json", "{oops");
  try {
    load_tokenizer(dir.str());
    ADD_FAILURE();
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_tokenizer((dir / "absent").string()), core::Error);
}
