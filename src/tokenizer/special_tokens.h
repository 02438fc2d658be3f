// Finding special (added) tokens written literally in text, e.g. "</s>" or "<|eot_id|>", the way
// HF tokenizers do before the model sees the text: leftmost match first, the longest token when
// several start at the same place, optional whitespace stripping around a token (lstrip/rstrip).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace zerolora::tokenizer {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = true;      // skipped by decode(skip_special=true)
  bool lstrip = false;      // the match also eats whitespace on its left
  bool rstrip = false;      // ... and on its right
  bool single_word = false; // only matches when not inside a word
};

// One part of the text: either plain text (token_id == -1) or one added token.
struct TextSegment {
  std::string_view text;
  int32_t token_id = -1;
};

class SpecialTokenMatcher {
 public:
  SpecialTokenMatcher() = default;
  explicit SpecialTokenMatcher(std::vector<AddedToken> tokens);

  // Splits text into plain parts and added tokens, in order; empty plain parts are dropped.
  std::vector<TextSegment> split(std::string_view text) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_by_id(int32_t id) const;
  const AddedToken* find_by_content(std::string_view content) const;

 private:
  std::vector<AddedToken> tokens_;
  // For each first byte, the tokens starting with it, longest first.
  std::vector<std::vector<size_t>> by_first_byte_ = std::vector<std::vector<size_t>>(256);
  std::unordered_map<int32_t, size_t> index_by_id_;
};

}  // namespace zerolora::tokenizer
