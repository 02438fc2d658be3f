// Byte-level BPE tokenizer.json: a tiny file written here (always runs), then the real fixtures and
// the Llama 3 tokenizer against ids from HF tokenizers (goldens from tools/tokenizer_reference.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tiny_bpe_json.h"
#include "tokenizer/tokenizer.h"

using namespace zerolora;
using namespace zerolora::tokenizer;
using nlohmann::json;

namespace {

using test::byte_level;

json tiny_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges,
                         const std::vector<std::string>& extra_vocab = {}) {
  // added tokens get ids 1000.. in this order
  return test::tiny_bpe_json(merges, ignore_merges, extra_vocab,
                             {{"<|bos|>", true, false, false},
                              {"<|end|>", true, false, true},
                              {"<|end|>x", false, false, false},
                              {"[L]", true, true, false}},
                             "<|bos|>");
}

BpeTokenizer make_tiny(const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges = false,
                       const std::vector<std::string>& extra_vocab = {}) {
  return BpeTokenizer(tiny_tokenizer_json(merges, ignore_merges, extra_vocab).dump(), "tiny/tokenizer.json");
}

std::vector<int32_t> ids_of(const BpeTokenizer& tok, std::initializer_list<const char*> tokens) {
  std::vector<int32_t> out;
  for (const char* t : tokens) {
    const int32_t id = tok.token_id(byte_level(t));
    EXPECT_GE(id, 0) << t;
    out.push_back(id);
  }
  return out;
}

json read_golden(const std::string& name) {
  std::ifstream in(std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/tokenizer/" + name);
  EXPECT_TRUE(in.good()) << name;
  return json::parse(in);
}

// Every golden case: ids with and without the post-processor's BOS, and decode in both skip modes.
void expect_matches_golden(const Tokenizer& tok, const json& golden) {
  int failures = 0;
  for (const json& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto with_bos = tok.encode(text, true);
    const auto without = tok.encode(text, false);
    EXPECT_EQ(with_bos, c["ids"].get<std::vector<int32_t>>()) << "text: " << json(text).dump();
    EXPECT_EQ(without, c["ids_no_bos"].get<std::vector<int32_t>>()) << "text: " << json(text).dump();
    EXPECT_EQ(tok.decode(without, false), c["decoded"].get<std::string>()) << "text: " << json(text).dump();
    EXPECT_EQ(tok.decode(without, true), c["decoded_skip_special"].get<std::string>()) << "text: " << json(text).dump();
    if (with_bos != c["ids"].get<std::vector<int32_t>>() && ++failures > 5) break;
  }
}

}  // namespace

TEST(BpeTokenizer, MergesApplyByRankNotPosition) {
  // "ll" outranks "el": in "ell" the right pair merges first even though "el" is further left.
  auto tok = make_tiny({{"l", "l"}, {"e", "l"}, {"h", "e"}, {"he", "ll"}, {"hell", "o"}});
  EXPECT_EQ(tok.encode("ell", false), ids_of(tok, {"e", "ll"}));
  EXPECT_EQ(tok.encode("hello", false), ids_of(tok, {"hello"}));
  EXPECT_EQ(tok.encode("hellohello", false), ids_of(tok, {"hello", "hello"}));
  // pieces never merge across pre-tokenizer boundaries
  EXPECT_EQ(tok.encode("hel lo", false), ids_of(tok, {"h", "el", " ", "l", "o"}));
}

TEST(BpeTokenizer, IgnoreMergesTakesWholeVocabularyWords) {
  // "ello" is in the vocabulary but no merge sequence builds it
  auto plain = make_tiny({{"l", "l"}, {"e", "ll"}}, false, {"ello"});
  auto ignoring = make_tiny({{"l", "l"}, {"e", "ll"}}, true, {"ello"});
  EXPECT_EQ(plain.encode("ello", false), ids_of(plain, {"ell", "o"}));
  EXPECT_EQ(ignoring.encode("ello", false), ids_of(ignoring, {"ello"}));
}

TEST(BpeTokenizer, LongWordIsLinearEnough) {
  // 20k identical letters: a quadratic merge loop would take seconds here.
  auto tok = make_tiny({{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}});
  const std::string word(20000, 'a');
  const auto ids = tok.encode(word, false);
  ASSERT_EQ(ids.size(), 20000u / 8);
  EXPECT_EQ(ids.front(), tok.token_id(byte_level("aaaaaaaa")));
  EXPECT_EQ(tok.decode(ids), word);
}

TEST(BpeTokenizer, AddedTokensSplitFirstWithStripping) {
  auto tok = make_tiny({});
  const int32_t h = tok.token_id("h"), i = tok.token_id("i");
  // longest match wins: "<|end|>x" (not special) over "<|end|>"
  EXPECT_EQ(tok.encode("h<|end|>x", false), (std::vector<int32_t>{h, 1002}));
  // rstrip: "<|end|>" eats the whitespace after it; lstrip: "[L]" eats the whitespace before it
  EXPECT_EQ(tok.encode("h<|end|>  i", false), (std::vector<int32_t>{h, 1001, i}));
  EXPECT_EQ(tok.encode("h  [L]i", false), (std::vector<int32_t>{h, 1003, i}));
  // the post-processor template adds <|bos|>
  EXPECT_EQ(tok.encode("h", true), (std::vector<int32_t>{1000, h}));
  EXPECT_EQ(tok.bos_id(), 1000);
  EXPECT_EQ(tok.vocab_size(), 1004);
  EXPECT_EQ(tok.unk_id(), -1);
  EXPECT_EQ(tok.pad_id(), -1);
  // decode: special tokens skipped on request, non-special added tokens kept
  EXPECT_EQ(tok.decode({1000, h, 1001, i}, true), "hi");
  EXPECT_EQ(tok.decode({1000, h, 1001, i}, false), "<|bos|>h<|end|>i");
  EXPECT_EQ(tok.decode({h, 1002}, true), "h<|end|>x");
}

TEST(BpeTokenizer, DecodeRepairsSplitCharacters) {
  auto tok = make_tiny({});
  const auto ids = tok.encode("\xC3\xA9", false);  // é = two byte tokens
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok.decode(ids), "\xC3\xA9");
  EXPECT_EQ(tok.decode({ids[0]}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.token_bytes(ids[0]), "\xC3");
  EXPECT_EQ(tok.token_text(tok.token_id(byte_level(" "))), "\xC4\xA0");  // "Ġ"
}

TEST(BpeTokenizer, MalformedFilesNameTheProblem) {
  auto expect_error = [](const json& j, const std::string& needle) {
    try {
      BpeTokenizer tok(j.dump(), "bad/tokenizer.json");
      ADD_FAILURE() << "no error for " << needle;
    } catch (const core::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  json j = tiny_tokenizer_json({{"a", "b"}}, false);
  json wordpiece = j;
  wordpiece["model"]["type"] = "WordPiece";
  expect_error(wordpiece, "WordPiece");
  json unknown_regex = j;
  unknown_regex["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  expect_error(unknown_regex, "neither Llama 3's nor Qwen2's");
  json bad_merge = j;
  bad_merge["model"]["merges"].push_back("zz qq");
  expect_error(bad_merge, "not in the vocabulary");
  json bad_normalizer = j;
  bad_normalizer["normalizer"] = {{"type", "Lowercase"}};
  expect_error(bad_normalizer, "Lowercase");
  try {
    BpeTokenizer tok("{not json", "bad/tokenizer.json");
    ADD_FAILURE();
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
}

TEST(BpeTokenizer, LoadTokenizerPicksTokenizerJson) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", tiny_tokenizer_json({{"a", "b"}}, false).dump());
  test::write_file(dir / "tokenizer_config.json", R"({"eos_token": "<|end|>", "pad_token": {"content": "<|bos|>"}})");
  auto tok = load_tokenizer(dir.str());
  EXPECT_FALSE(tok->is_sentencepiece());
  EXPECT_EQ(tok->eos_id(), 1001);
  EXPECT_EQ(tok->pad_id(), 1000);
  EXPECT_EQ(tok->encode("ab", false), (std::vector<int32_t>{256}));
  // a tokenizer.model that is not SentencePiece (Llama 3's tiktoken file) falls back to tokenizer.json
  test::write_file(dir / "tokenizer.model", "IQ== 0\nIg== 1\n");
  EXPECT_FALSE(load_tokenizer(dir.str())->is_sentencepiece());
}

TEST(BpeTokenizer, TiktokenSmallFixtureMatchesHfTokenizers) {
  ZL_REQUIRE_SHARED(path, "models/tokenizer-fixtures/tiktoken_small.tokenizer.json");
  BpeTokenizer tok(test::read_file(path), path);
  expect_matches_golden(tok, read_golden("bpe_tiktoken_small.json"));
}

TEST(BpeTokenizer, QwenStyleFixtureMatchesHfTokenizers) {
  ZL_REQUIRE_SHARED(path, "models/tokenizer-fixtures/tiny_bpe_qwen_style.tokenizer.json");
  BpeTokenizer tok(test::read_file(path), path);
  EXPECT_EQ(tok.token_id("<|im_end|>"), 2002);
  EXPECT_EQ(tok.bos_id(), -1);  // no post-processor template: Qwen adds no BOS
  expect_matches_golden(tok, read_golden("bpe_qwen_style.json"));
}

TEST(BpeTokenizer, Llama3MatchesHfTokenizers) {
  ZL_REQUIRE_SHARED(dir, "models/llama3-tokenizer");
  auto tok = BpeTokenizer::from_folder(dir);
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), 128000);
  EXPECT_EQ(tok->eos_id(), 128001);
  EXPECT_EQ(tok->token_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok->unk_id(), -1);
  // meta-llama/llama3 llama/test_tokenizer.py
  EXPECT_EQ(tok->encode("This is a test sentence.", true),
            (std::vector<int32_t>{128000, 2028, 374, 264, 1296, 11914, 13}));
  expect_matches_golden(*tok, read_golden("bpe_llama3.json"));
}
