// Tokenising a conversation and marking which tokens are trained (labels), two ways:
//
// 1. preprocess_vicuna_fastchat: FastChat train.py's `preprocess` reproduced exactly
//    (fastchat-spec §2.4/2.5): render vicuna_v1.1, tokenise with BOS, truncate at model_max_length,
//    then split the prompt text on "</s>" and " ASSISTANT: " and count tokens with the -2 offset per
//    instruction and, for non-legacy tokenizers, -1 per later turn; when the count disagrees with the
//    real length (and the row was not truncated) every label becomes -100 ("mismatch").
//    Used for vicuna_v1.1 with SentencePiece tokenizers, the case those offsets were written for.
// 2. preprocess_by_boundaries: every other template, and vicuna with byte-level BPE tokenizers (where
//    FastChat crashes, issue #3266). The whole prompt is tokenised once; the token index at each
//    trained piece's start and end comes from tokenising the prompt up to that character and taking
//    the common prefix with the full tokenisation, so a token that straddles a boundary (SentencePiece's
//    "▁I" after "ASSISTANT:") goes to the later piece. Assistant content + its end marker are trained.
//
// Labels are aligned with input_ids (not shifted, as HF passes them), -100 = not trained.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/conversation.h"
#include "data/templates.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::data {

inline constexpr int32_t kIgnoreIndex = -100;

// Why a sample lost some or all of its training signal; reported at start-up (FastChat stays silent).
enum class SampleIssue {
  Mismatch,            // FastChat's length check failed: whole sample masked
  OddLength,           // ends with a user message: whole sample masked (FastChat: a mismatch)
  Empty,               // no user/assistant pair: whole sample masked
  EmptyAssistant,      // an assistant message is "": that turn trains nothing
  SeparatorInText,     // a message contains the template's separator ("</s>", " ASSISTANT: "): masks may be wrong
  TruncatedAway,       // model_max_length cut before the first trained token: whole sample masked
};
const char* issue_name(SampleIssue issue);

struct SampleProblem {
  SampleIssue issue;
  std::string detail;
};

struct PreprocessResult {
  std::vector<int32_t> input_ids, labels;
  bool truncated = false;
  std::vector<SampleProblem> problems;
  int64_t trained_tokens() const;
};

// Which offsets preprocess_vicuna_fastchat applies: the tokenizer's own legacy flag (what FastChat
// does), or one forced (tests show the other mode's offsets break multi-turn rows, issue #2494).
enum class VicunaOffsets { FromTokenizer, Legacy, NonLegacy };

PreprocessResult preprocess_vicuna_fastchat(const Conversation& conv, const tokenizer::Tokenizer& tok,
                                            int64_t model_max_length,
                                            VicunaOffsets offsets = VicunaOffsets::FromTokenizer);

PreprocessResult preprocess_by_boundaries(const Conversation& conv, TemplateStyle style,
                                          const tokenizer::Tokenizer& tok, int64_t model_max_length);

// The right one of the two for (style, tokenizer), plus the checks both share (odd length, empty rows).
// A message longer than prefix_for_model_max_length keeps is cut to that prefix first (HF tokenises the whole
// text and then truncates; the first model_max_length tokens, and so the sample, are the same).
PreprocessResult preprocess_conversation(const Conversation& conv, TemplateStyle style,
                                         const tokenizer::Tokenizer& tok, int64_t model_max_length);

// The beginning of `text` that holds at least 2 x model_max_length + 64 tokens of its own (tokenised alone),
// or all of it when it is shorter: tried at 4 bytes per token, doubled until the prefix holds enough. A
// tokenizer's choice near the cut depends on a few tokens around it (a word, a merge chain), never on
// model_max_length tokens, so the first model_max_length tokens of a prompt holding the prefix in place of
// the text are the whole text's (tests/data/test_long_messages.cpp checks it on SentencePiece and BPE).
std::string prefix_for_model_max_length(const std::string& text, const tokenizer::Tokenizer& tok,
                                        int64_t model_max_length);

// Python's str.split(sep) (sep non-empty): "a</s>b</s>" -> {"a", "b", ""}.
std::vector<std::string> python_split(const std::string& text, const std::string& sep);

}  // namespace zerolora::data
