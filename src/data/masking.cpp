#include "data/masking.h"

#include <algorithm>

namespace zerolora::data {

namespace {

const char* const kVicunaTurnEnd = "</s>";
const char* const kVicunaAnswerSep = " ASSISTANT: ";  // conv.sep + conv.roles[1] + ": "

void mask_range(std::vector<int32_t>& labels, int64_t begin, int64_t end) {
  begin = std::max<int64_t>(begin, 0);
  end = std::min<int64_t>(end, static_cast<int64_t>(labels.size()));
  for (int64_t k = begin; k < end; ++k) labels[k] = kIgnoreIndex;
}

bool any_message_contains(const Conversation& conv, const std::string& needle) {
  return std::any_of(conv.messages.begin(), conv.messages.end(),
                     [&](const Message& m) { return m.text.find(needle) != std::string::npos; });
}

std::string empty_assistant_turns(const Conversation& conv) {
  std::string turns;
  for (size_t k = 0; k < conv.messages.size(); ++k)
    if (conv.messages[k].role == Role::Assistant && conv.messages[k].text.empty())
      turns += (turns.empty() ? "" : ", ") + std::to_string(k);
  return turns;
}

// Number of leading tokens that `prefix_ids` shares with `ids`.
size_t common_prefix_length(const std::vector<int32_t>& prefix_ids, const std::vector<int32_t>& ids) {
  size_t n = 0;
  while (n < prefix_ids.size() && n < ids.size() && prefix_ids[n] == ids[n]) ++n;
  return n;
}

void truncate(PreprocessResult& r, int64_t model_max_length) {
  if (static_cast<int64_t>(r.input_ids.size()) > model_max_length) {
    r.input_ids.resize(static_cast<size_t>(model_max_length));
    r.labels.resize(static_cast<size_t>(model_max_length));
    r.truncated = true;
  }
}

}  // namespace

const char* issue_name(SampleIssue issue) {
  switch (issue) {
    case SampleIssue::Mismatch: return "tokenization mismatch";
    case SampleIssue::OddLength: return "ends with a user message";
    case SampleIssue::Empty: return "no user/assistant pair";
    case SampleIssue::EmptyAssistant: return "empty assistant message";
    case SampleIssue::SeparatorInText: return "separator in message text";
    case SampleIssue::TruncatedAway: return "truncated before the first answer";
  }
  return "?";
}

int64_t PreprocessResult::trained_tokens() const {
  return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
}

std::vector<std::string> python_split(const std::string& text, const std::string& sep) {
  std::vector<std::string> parts;
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(sep, pos);
    if (hit == std::string::npos) break;
    parts.push_back(text.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  parts.push_back(text.substr(pos));
  return parts;
}

PreprocessResult preprocess_vicuna_fastchat(const Conversation& conv, const tokenizer::Tokenizer& tok,
                                            int64_t model_max_length, VicunaOffsets offsets) {
  const std::string prompt = render_prompt(TemplateStyle::VicunaV11, conv);
  PreprocessResult r;
  // tokenizer(prompts, padding="max_length", max_length=model_max_length, truncation=True): BOS kept
  r.input_ids = tok.encode(prompt, true);
  r.labels = r.input_ids;
  truncate(r, model_max_length);

  const int32_t pad = tok.pad_id();
  const auto total_len = static_cast<int64_t>(
      std::count_if(r.input_ids.begin(), r.input_ids.end(), [&](int32_t id) { return id != pad; }));
  const bool legacy = offsets == VicunaOffsets::FromTokenizer ? tok.legacy() : offsets == VicunaOffsets::Legacy;

  int64_t cur_len = 1;
  if (!r.labels.empty()) r.labels[0] = kIgnoreIndex;
  const std::vector<std::string> turns = python_split(prompt, kVicunaTurnEnd);
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string& turn = turns[i];
    if (turn.empty()) break;
    // tokenizer(turn): its BOS stands in for the "</s>" the split removed
    const auto turn_len = static_cast<int64_t>(tok.encode(turn, true).size());
    const std::vector<std::string> parts = python_split(turn, kVicunaAnswerSep);
    if (parts.size() != 2) break;
    // minus BOS and the lone "▁" that the separator's trailing space becomes (fastchat-spec §2.5)
    auto instruction_len = static_cast<int64_t>(tok.encode(parts[0] + kVicunaAnswerSep, true).size()) - 2;
    if (i != 0 && !legacy) instruction_len -= 1;  // the turn after "</s>" gets no "▁" prefix
    mask_range(r.labels, cur_len, cur_len + instruction_len);
    cur_len += turn_len;
    if (i != 0 && !legacy) cur_len -= 1;
  }
  mask_range(r.labels, cur_len, static_cast<int64_t>(r.labels.size()));

  if (cur_len < model_max_length && cur_len != total_len) {
    std::fill(r.labels.begin(), r.labels.end(), kIgnoreIndex);
    std::string why;
    if (any_message_contains(conv, kVicunaTurnEnd) || any_message_contains(conv, kVicunaAnswerSep))
      why = "a message contains \"</s>\" or \" ASSISTANT: \", which split the turns";
    else if (pad >= 0 && std::count(r.input_ids.begin(), r.input_ids.end(), pad) > 0)
      why = "the text has <unk> tokens, which FastChat counts as padding";
    else if (!empty_assistant_turns(conv).empty())
      why = "assistant message " + empty_assistant_turns(conv) + " is empty, which leaves a turn without \"" +
            kVicunaAnswerSep + "\"";
    else
      why = std::string("the tokenizer does not fit FastChat's offsets (legacy ") + (legacy ? "true" : "false") + ")";
    r.problems.push_back({SampleIssue::Mismatch, "FastChat counted " + std::to_string(cur_len) + " of " +
                                                     std::to_string(total_len) + " tokens: " + why});
  }
  return r;
}

PreprocessResult preprocess_by_boundaries(const Conversation& conv, TemplateStyle style,
                                          const tokenizer::Tokenizer& tok, int64_t model_max_length) {
  const std::vector<TemplatePiece> pieces = render_pieces(style, conv);
  const std::string prompt = join_pieces(pieces);
  const bool add_bos = !template_renders_bos(style);
  PreprocessResult r;
  r.input_ids = tok.encode(prompt, add_bos);
  r.labels.assign(r.input_ids.size(), kIgnoreIndex);

  // Token index where the text from `pos` on begins: tokens of the prefix that agree with the full
  // tokenisation; a token straddling `pos` counts as after it.
  auto token_index_at = [&](size_t pos) -> size_t {
    if (pos >= prompt.size()) return r.input_ids.size();
    return common_prefix_length(tok.encode(std::string_view(prompt).substr(0, pos), add_bos), r.input_ids);
  };
  size_t offset = 0;
  for (const TemplatePiece& piece : pieces) {
    const size_t begin = offset;
    offset += piece.text.size();
    if (!piece.trained) continue;
    const size_t first = token_index_at(begin), last = token_index_at(offset);
    for (size_t t = first; t < last; ++t) r.labels[t] = r.input_ids[t];
  }
  truncate(r, model_max_length);
  return r;
}

std::string prefix_for_model_max_length(const std::string& text, const tokenizer::Tokenizer& tok,
                                        int64_t model_max_length) {
  const int64_t want_tokens = 2 * model_max_length + 64;
  for (size_t bytes = size_t(want_tokens) * 4; bytes < text.size(); bytes *= 2) {
    size_t cut = bytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
    const std::string_view prefix = std::string_view(text).substr(0, cut);
    if (static_cast<int64_t>(tok.encode(prefix, false).size()) >= want_tokens) return std::string(prefix);
  }
  return text;
}

PreprocessResult preprocess_conversation(const Conversation& whole, TemplateStyle style,
                                         const tokenizer::Tokenizer& tok, int64_t model_max_length) {
  // Messages (and a system prompt) far longer than model_max_length tokens are cut first, so that a 10 MB
  // message costs what model_max_length tokens cost; every check below still sees the whole conversation.
  const Conversation* source = &whole;
  Conversation shortened;
  const size_t long_text = size_t(2 * model_max_length + 64) * 4;
  bool any_long = whole.system.size() > long_text;
  for (const Message& m : whole.messages) any_long = any_long || m.text.size() > long_text;
  if (any_long) {
    shortened = whole;
    shortened.system = prefix_for_model_max_length(whole.system, tok, model_max_length);
    for (Message& m : shortened.messages) m.text = prefix_for_model_max_length(m.text, tok, model_max_length);
    source = &shortened;
  }
  const Conversation& conv = whole;
  const bool fastchat_exact = style == TemplateStyle::VicunaV11 && tok.is_sentencepiece();
  PreprocessResult r = fastchat_exact ? preprocess_vicuna_fastchat(*source, tok, model_max_length)
                                      : preprocess_by_boundaries(*source, style, tok, model_max_length);

  const bool mismatch = !r.problems.empty() && r.problems.front().issue == SampleIssue::Mismatch;
  const bool odd = !conv.messages.empty() && conv.messages.back().role == Role::User;
  // Empty and odd-length rows: FastChat masks them through its mismatch check; the boundary path
  // masks them the same way, so that every template drops the same rows.
  // (A truncated row skips FastChat's check, so it keeps whatever labels survived the cut.)
  const bool masked_like_fastchat = fastchat_exact ? mismatch : !r.truncated;
  if (conv.messages.empty() && masked_like_fastchat) {
    std::fill(r.labels.begin(), r.labels.end(), kIgnoreIndex);
    r.problems = {{SampleIssue::Empty, conv.dropped_leading_assistant ? "only an assistant message (dropped)"
                                                                      : "no messages"}};
    return r;
  }
  if (odd && masked_like_fastchat) {
    std::fill(r.labels.begin(), r.labels.end(), kIgnoreIndex);
    r.problems = {{SampleIssue::OddLength, std::to_string(conv.messages.size()) + " messages"}};
    return r;
  }
  const std::string empty_turns = empty_assistant_turns(conv);
  if (!empty_turns.empty() && !mismatch) r.problems.push_back({SampleIssue::EmptyAssistant, "message " + empty_turns});
  if (fastchat_exact && !mismatch &&
      (any_message_contains(conv, kVicunaTurnEnd) || any_message_contains(conv, kVicunaAnswerSep)))
    r.problems.push_back({SampleIssue::SeparatorInText, "labels follow FastChat's split and may cover the wrong text"});
  if (r.truncated && !mismatch && r.trained_tokens() == 0)
    r.problems.push_back({SampleIssue::TruncatedAway, "model_max_length " + std::to_string(model_max_length)});
  return r;
}

}  // namespace zerolora::data
