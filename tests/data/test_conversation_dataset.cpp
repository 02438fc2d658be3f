// Reading conversation files (JSON, JSONL, malformed rows) and the Dataset: eager vs lazy,
// the masking report, strict mode, and what `data inspect` prints.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "data/dataset.h"
#include "data/inspect.h"
#include "data_test_util.h"

using namespace zerolora;
using namespace zerolora::data;

namespace {

// The error message of parsing text, or "" when it parses.
std::string parse_error(const std::string& text) {
  try {
    parse_conversations(text, "data.json");
  } catch (const core::Error& e) {
    return e.what();
  }
  return "";
}

void expect_contains(const std::string& haystack, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(haystack.find(n), std::string::npos) << "'" << n << "' not in: " << haystack;
}

const char* const kMixedRows = R"([
  {"id": "good", "conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "A model."}]},
  {"id": "odd", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}]},
  {"id": "empty", "conversations": []},
  {"id": "unk", "conversations": [{"from": "human", "value": "x <unk> y"}, {"from": "gpt", "value": "ok"}]},
  {"id": "good2", "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]}
])";

}  // namespace

TEST(Conversations, JsonAndJsonlReadTheSameRows) {
  const std::string json = R"([{"id": "a", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]},
                               {"id": 7, "conversations": [{"from": "system", "value": "S"}, {"from": "user", "value": "q2"},
                                                           {"from": "assistant", "value": "r2"}]}])";
  const std::string jsonl =
      "{\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"r\"}]}\n"
      "\n"
      "{\"id\": 7, \"conversations\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"user\", \"value\": \"q2\"}, "
      "{\"from\": \"assistant\", \"value\": \"r2\"}]}\n";
  for (const auto& text : {json, jsonl}) {
    const auto rows = parse_conversations(text, "x");
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].id, "a");
    EXPECT_EQ(rows[1].id, "7");
    EXPECT_EQ(rows[1].row, 1u);
    EXPECT_TRUE(rows[1].has_system);
    EXPECT_EQ(rows[1].system, "S");
    ASSERT_EQ(rows[1].messages.size(), 2u);
    EXPECT_EQ(rows[1].messages[1].role, Role::Assistant);
    EXPECT_EQ(rows[1].messages[1].text, "r2");
  }
}

TEST(Conversations, MalformedDataNamesFileRowIdAndFix) {
  expect_contains(parse_error("[{\"id\": 1,"), {"data.json", "not valid JSON", "fix:"});
  expect_contains(parse_error("hello"), {"data.json", "neither '['", "fix:"});
  expect_contains(parse_error(R"([{"id": "r0", "conversations": []}, {"id": "no_conv"}])"),
                  {"data.json row 1", "no_conv", "no \"conversations\"", "fix:"});
  expect_contains(parse_error(R"([{"id": "num", "conversations": [{"from": "human", "value": 3}]}])"),
                  {"row 0", "num", "number \"value\"", "fix:"});
  expect_contains(parse_error(R"([{"id": "sys", "conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "b"}]}])"),
                  {"sys", "system", "fix:"});
  expect_contains(parse_error("{\"id\": \"l1\", \"conversations\": []}\n{\"id\": \"l2\", \"conversations\": [}\n"),
                  {"data.json line 2", "row 1", "not valid JSON"});
  expect_contains(parse_error(R"([{"id": "r", "conversations": [{"from": "human"}]}])"),
                  {"row 0", "\"from\" and \"value\""});
  EXPECT_EQ(parse_error(R"([{"id": "fine", "conversations": [{"from": "human", "value": "a"}]}])"), "");
  EXPECT_THROW(read_conversations("/nonexistent/file.json"), core::Error);
}

TEST(Dataset, ReportsEveryMaskedOutSampleWithIdAndReason) {
  test::TempDir dir;
  test::write_file(dir / "mixed.json", kMixedRows);
  const auto tok = test::tiny_sentencepiece(true);
  Dataset ds = Dataset::load((dir / "mixed.json").string(), *tok, DataOptions{});
  ASSERT_EQ(ds.size(), 5u);
  const MaskingReport& rep = ds.report();
  EXPECT_EQ(rep.samples_total, 5u);
  EXPECT_EQ(rep.samples_processed, 5u);
  EXPECT_EQ(rep.masked_out, 3u);
  ASSERT_EQ(rep.entries.size(), 3u);
  EXPECT_EQ(rep.entries[0].id, "odd");
  EXPECT_EQ(rep.entries[0].issue, SampleIssue::OddLength);
  EXPECT_EQ(rep.entries[1].id, "empty");
  EXPECT_EQ(rep.entries[1].issue, SampleIssue::Empty);
  EXPECT_EQ(rep.entries[2].id, "unk");
  EXPECT_EQ(rep.entries[2].issue, SampleIssue::Mismatch);
  EXPECT_TRUE(rep.entries[2].whole_sample);
  int64_t tokens = 0, trained = 0;
  for (size_t i = 0; i < ds.size(); ++i) {
    const Sample& s = ds.get(i);
    tokens += static_cast<int64_t>(s.input_ids.size());
    for (int32_t l : s.labels) trained += l != kIgnoreIndex;
  }
  EXPECT_EQ(rep.tokens, tokens);
  EXPECT_EQ(rep.trained_tokens, trained);
  EXPECT_GT(trained, 0);
  const std::string summary = rep.summary("mixed.json");
  expect_contains(summary, {"5 samples", "3 samples masked out", "row 1 (id \"odd\")", "ends with a user message",
                            "row 3 (id \"unk\")"});
}

TEST(Dataset, StrictModeStopsAtTheFirstMaskedOutRow) {
  const auto tok = test::tiny_sentencepiece(true);
  DataOptions opt;
  opt.strict = true;
  try {
    Dataset::from_conversations(parse_conversations(kMixedRows, "mixed.json"), "mixed.json", *tok, opt);
    FAIL() << "no error";
  } catch (const core::Error& e) {
    expect_contains(e.what(), {"mixed.json row 1", "odd", "ends with a user message", "fix:"});
  }
}

TEST(Dataset, LazyGivesTheSameSamplesAndReportsAsItGoes) {
  const auto tok = test::tiny_sentencepiece(false);
  const auto convs = read_conversations(test::golden_path("synthetic_conversations.json"));
  DataOptions eager_opt, lazy_opt;
  lazy_opt.lazy = true;
  Dataset eager = Dataset::from_conversations(convs, "synthetic", *tok, eager_opt);
  Dataset lazy = Dataset::from_conversations(convs, "synthetic", *tok, lazy_opt);
  EXPECT_EQ(lazy.report().samples_processed, 0u);
  const Sample& late = lazy.get(convs.size() - 1);
  EXPECT_EQ(lazy.report().samples_processed, 1u);
  EXPECT_EQ(&late, &lazy.get(convs.size() - 1));  // cached
  EXPECT_EQ(lazy.report().samples_processed, 1u);
  for (size_t i = 0; i < convs.size(); ++i) {
    EXPECT_EQ(lazy.get(i).input_ids, eager.get(i).input_ids);
    EXPECT_EQ(lazy.get(i).labels, eager.get(i).labels);
  }
  EXPECT_EQ(lazy.report().masked_out, eager.report().masked_out);
  EXPECT_EQ(lazy.report().tokens, eager.report().tokens);
  // non-legacy offsets do not fit the tiny model (it learned "USER" as one piece), as the reference says
  EXPECT_EQ(eager.report().by_issue.at(SampleIssue::Mismatch),
            test::read_golden_json("vicuna_synthetic_tiny.json")["non_legacy"]["mismatches"].get<size_t>());
  EXPECT_THROW(lazy.get(convs.size()), core::Error);
}

TEST(Dataset, TemplateAndLengthOptionsApply) {
  const auto tok = test::tiny_sentencepiece(true);
  DataOptions opt;
  opt.conv_template = "mistral";
  opt.model_max_length = 16;
  Dataset ds = Dataset::from_conversations(parse_conversations(kMixedRows, "m"), "m", *tok, opt);
  EXPECT_EQ(ds.style(), TemplateStyle::Mistral);
  for (size_t i = 0; i < ds.size(); ++i) EXPECT_LE(ds.get(i).input_ids.size(), 16u);
  EXPECT_GT(ds.report().truncated, 0u);
  opt.conv_template = "nope";
  EXPECT_THROW(Dataset::from_conversations({}, "m", *tok, opt), core::Error);
}

TEST(Inspect, HighlightsTrainedTokensAndWritesJsonl) {
  const auto tok = test::tiny_sentencepiece(true);
  DataOptions opt;
  opt.lazy = true;
  Dataset ds = Dataset::from_conversations(parse_conversations(kMixedRows, "mixed.json"), "mixed.json", *tok, opt);
  const std::string plain = highlight_trained_text(ds.get(0), *tok, false);
  EXPECT_NE(plain.find("USER: Who are you? ASSISTANT:[[ A model.</s>]]"), std::string::npos) << plain;
  const std::string coloured = highlight_trained_text(ds.get(0), *tok, true);
  EXPECT_NE(coloured.find("\x1b[1;32m A model.</s>\x1b[0m"), std::string::npos) << coloured;

  std::ostringstream text, jsonl;
  InspectOptions iopt;
  iopt.show_samples = 1;
  inspect_dataset(ds, *tok, iopt, text, &jsonl);
  std::istringstream lines(jsonl.str());
  std::string line;
  size_t count = 0;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["input_ids"].get<std::vector<int32_t>>(), ds.get(count).input_ids);
    EXPECT_EQ(j["labels"].get<std::vector<int32_t>>(), ds.get(count).labels);
    ++count;
  }
  EXPECT_EQ(count, 5u);
  expect_contains(text.str(), {"row 0 (id \"good\")", "[[", "3 samples masked out", "tokenization mismatch: 1"});
  EXPECT_EQ(text.str().find("--- row 1"), std::string::npos);  // only one sample shown in full
}
