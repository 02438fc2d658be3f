// Template renderings (fastchat-spec §3) and label spans computed from rendered turn boundaries.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/masking.h"
#include "data/templates.h"
#include "data_test_util.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tiny_bpe_json.h"

using namespace zerolora;
using namespace zerolora::data;
using test::make_conversation;
using test::trained_text;

namespace {

Conversation with_system(Conversation c, const std::string& system) {
  c.has_system = true;
  c.system = system;
  return c;
}

const Conversation kTwoTurns = make_conversation({"Hello!", "Hi!", "How are you?", "Fine."});

std::unique_ptr<tokenizer::BpeTokenizer> tiny_llama3_like() {
  return std::make_unique<tokenizer::BpeTokenizer>(test::tiny_llama3_like_json().dump(), "tiny-llama3/tokenizer.json");
}

}  // namespace

TEST(Templates, VicunaRendering) {
  EXPECT_EQ(render_prompt(TemplateStyle::VicunaV11, kTwoTurns),
            default_system_message(TemplateStyle::VicunaV11) +
                " USER: Hello! ASSISTANT: Hi!</s>USER: How are you? ASSISTANT: Fine.</s>");
  EXPECT_EQ(render_prompt(TemplateStyle::VicunaV11, with_system(make_conversation({"q", "a"}), "SYS")),
            "SYS USER: q ASSISTANT: a</s>");
}

TEST(Templates, Llama2Rendering) {
  EXPECT_EQ(render_prompt(TemplateStyle::Llama2, with_system(kTwoTurns, "SYS")),
            "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nHello! [/INST] Hi! </s><s>[INST] How are you? [/INST] Fine. </s><s>");
  EXPECT_EQ(render_prompt(TemplateStyle::Llama2, kTwoTurns),
            "[INST] Hello! [/INST] Hi! </s><s>[INST] How are you? [/INST] Fine. </s><s>");
}

TEST(Templates, MistralRendering) {
  EXPECT_EQ(render_prompt(TemplateStyle::Mistral, kTwoTurns),
            "[INST] Hello! [/INST] Hi!</s>[INST] How are you? [/INST] Fine.</s>");
  EXPECT_EQ(render_prompt(TemplateStyle::Mistral, with_system(make_conversation({"q", "a"}), "SYS")),
            "[INST] SYS\nq [/INST] a</s>");
}

TEST(Templates, Llama3RenderingStripsMessages) {
  EXPECT_EQ(render_prompt(TemplateStyle::Llama3, with_system(make_conversation({"  Hello!\n", "Hi! "}), "SYS")),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>");
  EXPECT_EQ(python_strip("\x1c \t x y \u3000"), "x y");
}

TEST(Templates, ChatMLRendering) {
  EXPECT_EQ(render_prompt(TemplateStyle::ChatML, make_conversation({"hi", "hello"})),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\nhello<|im_end|>\n");
  EXPECT_EQ(find_template("qwen-7b-chat"), TemplateStyle::ChatML);
}

TEST(Templates, TrainedPiecesAreAnswersWithTheirEndMarker) {
  auto trained = [](TemplateStyle s) {
    std::string out;
    for (const auto& p : render_pieces(s, kTwoTurns))
      if (p.trained) out += (out.empty() ? "" : "|") + p.text;
    return out;
  };
  EXPECT_EQ(trained(TemplateStyle::VicunaV11), " Hi!</s>| Fine.</s>");
  EXPECT_EQ(trained(TemplateStyle::Llama2), " Hi! </s>| Fine. </s>");
  EXPECT_EQ(trained(TemplateStyle::Mistral), " Hi!</s>| Fine.</s>");
  EXPECT_EQ(trained(TemplateStyle::Llama3), "Hi!<|eot_id|>|Fine.<|eot_id|>");
  EXPECT_EQ(trained(TemplateStyle::ChatML), "Hi!<|im_end|>|Fine.<|im_end|>");
}

TEST(Templates, UnknownNameListsTheKnownOnes) {
  try {
    find_template("alpaca");
    FAIL();
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--conv_template"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("llama-3"), std::string::npos);
  }
}

TEST(BoundaryMasking, Llama3TemplateWithByteLevelBpe) {
  const auto tok = tiny_llama3_like();
  const auto r = preprocess_conversation(kTwoTurns, TemplateStyle::Llama3, *tok, 512);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(r.input_ids.front(), tok->bos_id());  // rendered, not added a second time
  EXPECT_NE(r.input_ids[1], tok->bos_id());
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), "Hi!<|eot_id|>|Fine.<|eot_id|>");
}

TEST(BoundaryMasking, ChatMLTemplateWithByteLevelBpe) {
  const auto tok = tiny_llama3_like();
  const auto r = preprocess_conversation(make_conversation({"hello world", "hello\n\nworld"}), TemplateStyle::ChatML,
                                         *tok, 512);
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), "hello\n\nworld<|im_end|>");
}

TEST(BoundaryMasking, Llama2AndMistralWithSentencePieceBothModes) {
  for (bool legacy : {true, false}) {
    const auto tok = test::tiny_sentencepiece(legacy);
    const auto l2 = preprocess_conversation(kTwoTurns, TemplateStyle::Llama2, *tok, 512);
    EXPECT_EQ(trained_text(*tok, l2.input_ids, l2.labels), " Hi! </s>| Fine. </s>") << legacy;
    EXPECT_EQ(l2.input_ids.front(), tok->bos_id());
    const auto mi = preprocess_conversation(kTwoTurns, TemplateStyle::Mistral, *tok, 512);
    EXPECT_EQ(trained_text(*tok, mi.input_ids, mi.labels), " Hi!</s>| Fine.</s>") << legacy;
    // the token ids are those of the whole prompt, not of pieces tokenised apart
    EXPECT_EQ(mi.input_ids, tok->encode(render_prompt(TemplateStyle::Mistral, kTwoTurns), true));
  }
}

TEST(BoundaryMasking, AgreesWithFastChatOffsetsWhereThoseAreRight) {
  // The tiny model's legacy mode gives FastChat 0 mismatches on the synthetic data: there the
  // boundary method must find exactly FastChat's labels, row by row.
  const auto tok = test::tiny_sentencepiece(true);
  const auto convs = read_conversations(test::golden_path("synthetic_conversations.json"));
  for (const auto& conv : convs) {
    const auto exact = preprocess_vicuna_fastchat(conv, *tok, 512);
    ASSERT_TRUE(exact.problems.empty()) << conv.id;
    const auto boundaries = preprocess_by_boundaries(conv, TemplateStyle::VicunaV11, *tok, 512);
    EXPECT_EQ(boundaries.input_ids, exact.input_ids) << conv.id;
    EXPECT_EQ(boundaries.labels, exact.labels) << conv.id;
  }
}

TEST(BoundaryMasking, VicunaWithBpeUsesBoundaries) {
  // FastChat's offsets assume SentencePiece; with byte-level BPE the spans come from the boundaries.
  const auto tok = tiny_llama3_like();
  const auto r = preprocess_conversation(kTwoTurns, TemplateStyle::VicunaV11, *tok, 512);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(r.input_ids.front(), tok->bos_id());
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), " Hi!</s>| Fine.</s>");
}

TEST(BoundaryMasking, OddEmptyAndTruncatedRowsAreReported) {
  const auto tok = tiny_llama3_like();
  const auto odd = preprocess_conversation(make_conversation({"q", "a", "q2"}), TemplateStyle::Llama3, *tok, 512);
  EXPECT_EQ(odd.trained_tokens(), 0);
  ASSERT_EQ(odd.problems.size(), 1u);
  EXPECT_EQ(odd.problems[0].issue, SampleIssue::OddLength);

  const auto empty_answer =
      preprocess_conversation(make_conversation({"q", "", "q2", "a2"}), TemplateStyle::Llama3, *tok, 512);
  EXPECT_EQ(trained_text(*tok, empty_answer.input_ids, empty_answer.labels), "a2<|eot_id|>");
  ASSERT_EQ(empty_answer.problems.size(), 1u);
  EXPECT_EQ(empty_answer.problems[0].issue, SampleIssue::EmptyAssistant);

  const auto cut = preprocess_conversation(make_conversation({"question", "answer"}), TemplateStyle::Llama3, *tok, 8);
  EXPECT_EQ(cut.input_ids.size(), 8u);
  EXPECT_TRUE(cut.truncated);
  ASSERT_EQ(cut.problems.size(), 1u);
  EXPECT_EQ(cut.problems[0].issue, SampleIssue::TruncatedAway);
}

TEST(BoundaryMasking, RealLlama3Tokenizer) {
  ZL_REQUIRE_SHARED(dir, "models/llama3-tokenizer");
  const auto tok = tokenizer::BpeTokenizer::from_folder(dir);
  const auto conv = with_system(make_conversation({"Who are you?", "I am a model.\n\nAsk me anything!", "2+2?", "4"}),
                                "Be brief.");
  const auto r = preprocess_conversation(conv, TemplateStyle::Llama3, *tok, 512);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(r.input_ids, tok->encode(render_prompt(TemplateStyle::Llama3, conv), false));
  EXPECT_EQ(r.input_ids.front(), 128000);
  EXPECT_EQ(trained_text(*tok, r.input_ids, r.labels), "I am a model.\n\nAsk me anything!<|eot_id|>|4<|eot_id|>");
}
