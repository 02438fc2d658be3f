// FastChat train.py preprocess (vicuna_v1.1) reproduced exactly: fastchat-spec §2.5's golden vector,
// the whole dummy data set against a Python re-implementation on transformers' slow tokenizer, the
// same on synthetic data with the committed tiny model (runs without ../shared), and §2.7's edge cases.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/conversation.h"
#include "data/masking.h"
#include "data_test_util.h"

using namespace zerolora;
using namespace zerolora::data;
using test::make_conversation;
using test::trained_spans;
using test::trained_text;

namespace {

// Every row of a golden file: ids (CRC-32), length, mismatch flag and trained spans; both modes; and
// the mismatch count when the other mode's offsets are applied.
void expect_rows_match_golden(const std::string& model_path, const std::vector<Conversation>& convs,
                              const nlohmann::json& golden) {
  const int64_t max_len = golden["model_max_length"].get<int64_t>();
  for (bool legacy : {true, false}) {
    const auto tok = test::sentencepiece_at(model_path, legacy);
    const nlohmann::json& mode = golden[legacy ? "legacy" : "non_legacy"];
    const nlohmann::json& rows = mode["rows"];
    ASSERT_EQ(rows.size(), convs.size());
    int mismatches = 0, other_mode_mismatches = 0, failures = 0;
    for (size_t i = 0; i < convs.size(); ++i) {
      const PreprocessResult r = preprocess_vicuna_fastchat(convs[i], *tok, max_len);
      const bool mismatch = !r.problems.empty() && r.problems[0].issue == SampleIssue::Mismatch;
      mismatches += mismatch;
      const auto other = preprocess_vicuna_fastchat(convs[i], *tok, max_len,
                                                    legacy ? VicunaOffsets::NonLegacy : VicunaOffsets::Legacy);
      other_mode_mismatches += !other.problems.empty() && other.problems[0].issue == SampleIssue::Mismatch;

      const nlohmann::json& g = rows[i];
      std::vector<std::pair<int, int>> want;
      for (const auto& s : g["spans"]) want.emplace_back(s[0].get<int>(), s[1].get<int>());
      const bool ok = g["id"] == convs[i].id && static_cast<size_t>(g["n"].get<int>()) == r.input_ids.size() &&
                      g["ids_crc32"].get<uint32_t>() == test::crc32_of_ids(r.input_ids) && trained_spans(r.labels) == want;
      EXPECT_TRUE(ok) << (legacy ? "legacy" : "non-legacy") << " row " << i << " id " << convs[i].id << ": n "
                      << r.input_ids.size() << " vs " << g["n"] << ", spans differ: "
                      << (trained_spans(r.labels) != want);
      if (!ok && ++failures > 3) break;
    }
    EXPECT_EQ(mismatches, mode["mismatches"].get<int>());
    EXPECT_EQ(other_mode_mismatches, mode["mismatches_with_other_offsets"].get<int>());
  }
}

}  // namespace

TEST(VicunaMasking, GoldenVectorIdentity0BothModes) {
  // fastchat-spec §2.5: identity_0 with the Llama-2 tokenizer
  ZL_REQUIRE_SHARED(model, "models/llama2-tokenizer/tokenizer.model");
  ZL_REQUIRE_SHARED(data_path, "data/dummy_conversation.json");
  const Conversation conv = read_conversations(data_path).at(0);
  ASSERT_EQ(conv.id, "identity_0");
  const std::vector<int32_t> non_legacy_ids = {
      1,     319,   13563, 1546,  263,   12758, 1404,  322,   385,   23116, 21082, 20255, 29889, 450,   20255,
      4076,  8444,  29892, 13173, 29892, 322,   1248,  568,   6089,  304,   278,   1404,  29915, 29879, 5155,
      29889, 3148,  1001,  29901, 11644, 526,   366,   29973, 319,   1799,  9047,  13566, 29901, 306,   626,
      13423, 4347,  29892, 263,   4086,  1904,  16370, 491,   5925,  414,   515,   8218,  479,   8125,  23985,
      9205,  2133,  313,   29931, 4345,  21554, 467,   2,     11889, 29901, 6975,  263,   7575,  2462,  29991,
      319,   1799,  9047,  13566, 29901, 887,   2086,  29991, 2};
  ASSERT_EQ(non_legacy_ids.size(), 84u);
  const auto non_legacy = preprocess_vicuna_fastchat(conv, *test::sentencepiece_at(model, false), 512);
  EXPECT_EQ(non_legacy.input_ids, non_legacy_ids);
  EXPECT_EQ(trained_spans(non_legacy.labels), (std::vector<std::pair<int, int>>{{43, 68}, {80, 84}}));
  EXPECT_TRUE(non_legacy.problems.empty());
  for (size_t k = 0; k < non_legacy.labels.size(); ++k) {
    if (non_legacy.labels[k] != kIgnoreIndex) {
      EXPECT_EQ(non_legacy.labels[k], non_legacy.input_ids[k]);
    }
  }

  // legacy: the second turn starts with 3148,1001 ("▁US ER") instead of 11889 ("USER")
  std::vector<int32_t> legacy_ids(non_legacy_ids.begin(), non_legacy_ids.begin() + 68);
  legacy_ids.insert(legacy_ids.end(), {3148, 1001});
  legacy_ids.insert(legacy_ids.end(), non_legacy_ids.begin() + 69, non_legacy_ids.end());
  const auto legacy = preprocess_vicuna_fastchat(conv, *test::sentencepiece_at(model, true), 512);
  EXPECT_EQ(legacy.input_ids, legacy_ids);
  EXPECT_EQ(trained_spans(legacy.labels), (std::vector<std::pair<int, int>>{{43, 68}, {81, 85}}));
}

TEST(VicunaMasking, DummyDataMatchesReferenceBothModes) {
  // 0 of 500 mismatches in both modes; 333 when the other mode's offsets are applied (spec §2.5)
  ZL_REQUIRE_SHARED(model, "models/llama2-tokenizer/tokenizer.model");
  ZL_REQUIRE_SHARED(data_path, "data/dummy_conversation.json");
  const auto golden = test::read_golden_json("vicuna_dummy_llama2.json");
  ASSERT_EQ(golden["legacy"]["mismatches"], 0);
  ASSERT_EQ(golden["non_legacy"]["mismatches"], 0);
  ASSERT_EQ(golden["legacy"]["mismatches_with_other_offsets"], 333);
  ASSERT_EQ(golden["non_legacy"]["mismatches_with_other_offsets"], 333);
  expect_rows_match_golden(model, read_conversations(data_path), golden);
}

TEST(VicunaMasking, SyntheticDataMatchesReferenceWithTinyModel) {
  const auto convs = read_conversations(test::golden_path("synthetic_conversations.json"));
  expect_rows_match_golden(test::golden_path("tiny_llama_sp.model"), convs,
                           test::read_golden_json("vicuna_synthetic_tiny.json"));
  expect_rows_match_golden(test::golden_path("tiny_llama_sp.model"), convs,
                           test::read_golden_json("vicuna_synthetic_tiny_truncated.json"));
}

TEST(VicunaMasking, SupervisesAnswersAndTheirEndToken) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto r = preprocess_vicuna_fastchat(make_conversation({"Who are you?", "I am Vicuna.", "Hi!", "You too!"}),
                                            *tok, 512);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), " I am Vicuna.</s>| You too!</s>");
}

// ---- fastchat-spec §2.7 edge cases, one test each ------------------------------------------------

TEST(VicunaEdgeCases, OddLengthMasksTheWholeSample) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto r = preprocess_conversation(make_conversation({"Hi", "Hello!", "And then?"}), TemplateStyle::VicunaV11,
                                         *tok, 512);
  EXPECT_FALSE(r.input_ids.empty());
  EXPECT_EQ(r.trained_tokens(), 0);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].issue, SampleIssue::OddLength);
  // FastChat's own check is what masks it
  const auto raw = preprocess_vicuna_fastchat(make_conversation({"Hi", "Hello!", "And then?"}), *tok, 512);
  ASSERT_FALSE(raw.problems.empty());
  EXPECT_EQ(raw.problems[0].issue, SampleIssue::Mismatch);
}

TEST(VicunaEdgeCases, FirstMessageFromGptIsDropped) {
  const std::string json = R"([{"id": "g", "conversations": [
      {"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}])";
  const auto convs = parse_conversations(json, "mem.json");
  ASSERT_EQ(convs[0].messages.size(), 2u);
  EXPECT_TRUE(convs[0].dropped_leading_assistant);
  const auto tok = test::tiny_sentencepiece(false);
  const auto dropped = preprocess_conversation(convs[0], TemplateStyle::VicunaV11, *tok, 512);
  const auto plain = preprocess_conversation(make_conversation({"Hi", "Hello!"}), TemplateStyle::VicunaV11, *tok, 512);
  EXPECT_EQ(dropped.input_ids, plain.input_ids);
  EXPECT_EQ(dropped.labels, plain.labels);
  EXPECT_GT(dropped.trained_tokens(), 0);
}

TEST(VicunaEdgeCases, UnknownRoleIsAClearErrorNotACrash) {
  const std::string json = R"([{"id": "ok", "conversations": []},
      {"id": "bad_7", "conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]}])";
  try {
    parse_conversations(json, "data.json");
    FAIL() << "no error";
  } catch (const core::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("data.json row 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad_7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("\"bot\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("fix:"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(VicunaEdgeCases, NonAlternatingRolesAreAClearError) {
  const std::string json = R"([{"id": "twice", "conversations": [
      {"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}])";
  try {
    parse_conversations(json, "data.json");
    FAIL() << "no error";
  } catch (const core::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("row 0 (id \"twice\")"), std::string::npos) << msg;
    EXPECT_NE(msg.find("message 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("alternate"), std::string::npos) << msg;
  }
}

TEST(VicunaEdgeCases, EmptyAssistantValueLosesThatPairAndIsReported) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto conv = make_conversation({"First?", "", "Second?", "Answer two."});
  EXPECT_NE(render_prompt(TemplateStyle::VicunaV11, conv).find("ASSISTANT:USER: Second?"), std::string::npos);
  const auto r = preprocess_conversation(conv, TemplateStyle::VicunaV11, *tok, 512);
  // no mismatch: the empty answer and the next question became masked instruction
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].issue, SampleIssue::EmptyAssistant);
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), " Answer two.</s>");
}

TEST(VicunaEdgeCases, LiteralEndOfSequenceInTextIsReported) {
  const auto tok = test::tiny_sentencepiece(true);
  // "</s>" in an answer ends the turn early for FastChat's split: the counts no longer add up
  const auto r = preprocess_conversation(make_conversation({"Hi", "Sure</s>thing", "More", "Yes"}),
                                         TemplateStyle::VicunaV11, *tok, 512);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_TRUE(r.problems[0].issue == SampleIssue::Mismatch || r.problems[0].issue == SampleIssue::SeparatorInText);
  EXPECT_NE(r.problems[0].detail.find("</s>"), std::string::npos) << r.problems[0].detail;
  // the literal text became the EOS token
  EXPECT_NE(std::find(r.input_ids.begin() + 1, r.input_ids.end() - 1, tok->eos_id()), r.input_ids.end() - 1);
}

TEST(VicunaEdgeCases, UnkTokenInTextCountsAsPaddingAndMasksTheSample) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto r = preprocess_conversation(make_conversation({"Say <unk> please", "Okay."}), TemplateStyle::VicunaV11,
                                         *tok, 512);
  EXPECT_NE(std::find(r.input_ids.begin(), r.input_ids.end(), tok->unk_id()), r.input_ids.end());
  EXPECT_EQ(r.trained_tokens(), 0);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].issue, SampleIssue::Mismatch);
  EXPECT_NE(r.problems[0].detail.find("<unk>"), std::string::npos);
}

TEST(VicunaEdgeCases, TruncationSkipsTheCheckAndKeepsMasksFromTheFullText) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto conv = make_conversation({"Who are you?", "I am a helpful assistant model trained by researchers."});
  const auto full = preprocess_conversation(conv, TemplateStyle::VicunaV11, *tok, 512);
  const auto spans = trained_spans(full.labels);
  ASSERT_EQ(spans.size(), 1u);
  // cut in the middle of the answer: the first part of the answer still trains, no mismatch
  const int64_t cut = spans[0].first + 3;
  const auto cut_mid = preprocess_conversation(conv, TemplateStyle::VicunaV11, *tok, cut);
  EXPECT_TRUE(cut_mid.truncated);
  EXPECT_EQ(static_cast<int64_t>(cut_mid.input_ids.size()), cut);
  EXPECT_EQ(trained_spans(cut_mid.labels), (std::vector<std::pair<int, int>>{{spans[0].first, static_cast<int>(cut)}}));
  EXPECT_TRUE(cut_mid.problems.empty());
  // cut before the answer: nothing trains, reported
  const auto cut_early = preprocess_conversation(conv, TemplateStyle::VicunaV11, *tok, spans[0].first);
  EXPECT_EQ(cut_early.trained_tokens(), 0);
  ASSERT_EQ(cut_early.problems.size(), 1u);
  EXPECT_EQ(cut_early.problems[0].issue, SampleIssue::TruncatedAway);
}

TEST(VicunaMasking, EmptyConversationIsMaskedAndReported) {
  const auto tok = test::tiny_sentencepiece(true);
  const auto r = preprocess_conversation(make_conversation({}), TemplateStyle::VicunaV11, *tok, 512);
  EXPECT_EQ(r.trained_tokens(), 0);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].issue, SampleIssue::Empty);
}

TEST(VicunaMasking, PythonSplitKeepsEmptyParts) {
  EXPECT_EQ(python_split("a</s>b</s>", "</s>"), (std::vector<std::string>{"a", "b", ""}));
  EXPECT_EQ(python_split("x", "</s>"), (std::vector<std::string>{"x"}));
  EXPECT_EQ(python_split("</s></s>", "</s>"), (std::vector<std::string>{"", "", ""}));
}
