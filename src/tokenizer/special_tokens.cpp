#include "tokenizer/special_tokens.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace zerolora::tokenizer {

namespace {

// The code point that ends just before byte `pos`, and its first byte.
char32_t codepoint_before(std::string_view text, size_t pos, size_t* start) {
  size_t s = pos - 1;
  while (s > 0 && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80 && pos - s < 4) --s;
  auto decoded = decode_utf8(text.substr(s, pos - s));
  *start = s;
  return decoded.empty() ? 0xFFFD : decoded.back().cp;
}

char32_t codepoint_at(std::string_view text, size_t pos, size_t* length) {
  size_t len = 1;
  const auto b = static_cast<unsigned char>(text[pos]);
  if (b >= 0xF0) len = 4;
  else if (b >= 0xE0) len = 3;
  else if (b >= 0xC0) len = 2;
  len = std::min(len, text.size() - pos);
  auto decoded = decode_utf8(text.substr(pos, len));
  *length = decoded.size() == 1 ? len : 1;
  return decoded.empty() ? 0xFFFD : decoded.front().cp;
}

bool is_word_char(char32_t cp) { return cp == '_' || is_letter(cp) || is_number(cp); }

}  // namespace

SpecialTokenMatcher::SpecialTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    index_by_id_[tokens_[i].id] = i;
    if (tokens_[i].content.empty()) continue;
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  }
  for (auto& bucket : by_first_byte_)
    std::stable_sort(bucket.begin(), bucket.end(),
                     [&](size_t a, size_t b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
}

const AddedToken* SpecialTokenMatcher::find_by_id(int32_t id) const {
  auto it = index_by_id_.find(id);
  return it == index_by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* SpecialTokenMatcher::find_by_content(std::string_view content) const {
  for (const auto& t : tokens_)
    if (t.content == content) return &t;
  return nullptr;
}

std::vector<TextSegment> SpecialTokenMatcher::split(std::string_view text) const {
  std::vector<TextSegment> out;
  size_t plain_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[pos])];
    const AddedToken* match = nullptr;
    for (size_t index : bucket) {
      const AddedToken& t = tokens_[index];
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        size_t unused;
        const bool word_before = pos > 0 && is_word_char(codepoint_before(text, pos, &unused));
        const size_t after = pos + t.content.size();
        const bool word_after = after < text.size() && is_word_char(codepoint_at(text, after, &unused));
        if (word_before || word_after) continue;
      }
      match = &t;
      break;
    }
    if (!match) {
      ++pos;
      continue;
    }
    size_t match_begin = pos;
    size_t match_end = pos + match->content.size();
    if (match->lstrip) {
      while (match_begin > plain_begin) {
        size_t start;
        if (!is_whitespace(codepoint_before(text, match_begin, &start))) break;
        match_begin = start;
      }
    }
    if (match->rstrip) {
      while (match_end < text.size()) {
        size_t len;
        if (!is_whitespace(codepoint_at(text, match_end, &len))) break;
        match_end += len;
      }
    }
    if (match_begin > plain_begin) out.push_back({text.substr(plain_begin, match_begin - plain_begin), -1});
    out.push_back({text.substr(match_begin, match_end - match_begin), match->id});
    plain_begin = pos = match_end;
  }
  if (plain_begin < text.size()) out.push_back({text.substr(plain_begin), -1});
  return out;
}

}  // namespace zerolora::tokenizer
