#include "tokenizer/pretokenizer.h"

#include "tokenizer/unicode.h"

namespace zerolora::tokenizer {

namespace {

const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Character classes of the regex, computed once per code point.
enum CharClass : uint8_t { kLetter, kNumber, kSpace, kNewline /* \r or \n, also whitespace */, kOther };

CharClass classify(char32_t cp) {
  if (cp < 0x80) {
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return kLetter;
    if (cp >= '0' && cp <= '9') return kNumber;
    if (cp == '\r' || cp == '\n') return kNewline;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
    return kOther;
  }
  if (is_letter(cp)) return kLetter;
  if (is_number(cp)) return kNumber;
  if (is_whitespace(cp)) return kSpace;
  return kOther;
}

bool is_ws(CharClass c) { return c == kSpace || c == kNewline; }

// Case folding as Oniguruma applies it under (?i) to the letters of the contractions:
// ASCII case, plus U+017F LATIN SMALL LETTER LONG S, which folds to 's'.
char32_t fold(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';
  return cp;
}

// End (exclusive, in code points) of the match starting at i; the alternatives in regex order.
size_t match_at(const std::vector<DecodedCodepoint>& cps, const std::vector<CharClass>& cls, size_t i,
                size_t max_digits) {
  const size_t n = cps.size();
  const char32_t c = cps[i].cp;

  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (c == '\'' && i + 1 < n) {
    const char32_t c1 = fold(cps[i + 1].cp);
    if (c1 == 's' || c1 == 't') return i + 2;
    if (i + 2 < n) {
      const char32_t c2 = fold(cps[i + 2].cp);
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e')) return i + 3;
    }
    if (c1 == 'm') return i + 2;
    if (i + 2 < n && c1 == 'l' && fold(cps[i + 2].cp) == 'l') return i + 3;
    if (c1 == 'd') return i + 2;
  }

  // [^\r\n\p{L}\p{N}]?\p{L}+
  size_t letters_from = n;
  if (cls[i] == kLetter) letters_from = i;
  else if (cls[i] != kNewline && cls[i] != kNumber && i + 1 < n && cls[i + 1] == kLetter) letters_from = i + 1;
  if (letters_from < n) {
    size_t j = letters_from + 1;
    while (j < n && cls[j] == kLetter) ++j;
    return j;
  }

  // \p{N}{1,3} (Llama 3) or \p{N} (Qwen2)
  if (cls[i] == kNumber) {
    size_t j = i + 1;
    while (j < n && j - i < max_digits && cls[j] == kNumber) ++j;
    return j;
  }

  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t symbols_from = (c == ' ' && i + 1 < n) ? i + 1 : i;
  if (cls[symbols_from] == kOther) {
    size_t j = symbols_from + 1;
    while (j < n && cls[j] == kOther) ++j;
    while (j < n && cls[j] == kNewline) ++j;
    return j;
  }

  // The rest start with whitespace (every other character was matched above).
  size_t run_end = i;
  size_t last_newline = n;
  while (run_end < n && is_ws(cls[run_end])) {
    if (cls[run_end] == kNewline) last_newline = run_end;
    ++run_end;
  }
  // \s*[\r\n]+ : \s* backtracks to the last newline of the run.
  if (last_newline < n) return last_newline + 1;
  // \s+(?!\S) : the whole run at the end of the text, otherwise all but its last character.
  if (run_end == n) return run_end;
  if (run_end - i >= 2) return run_end - 1;
  // \s+
  return run_end;
}

}  // namespace

bool pretokenizer_kind_from_regex(std::string_view pattern, PretokenizerKind* kind) {
  if (pattern == kLlama3Regex) { *kind = PretokenizerKind::Llama3; return true; }
  if (pattern == kQwen2Regex) { *kind = PretokenizerKind::Qwen2; return true; }
  return false;
}

std::string pretokenizer_regex(PretokenizerKind kind) {
  return kind == PretokenizerKind::Llama3 ? kLlama3Regex : kQwen2Regex;
}

std::vector<TextPiece> pretokenize(std::string_view text, PretokenizerKind kind) {
  std::vector<TextPiece> pieces;
  if (text.empty()) return pieces;
  const std::vector<DecodedCodepoint> cps = decode_utf8(text);
  std::vector<CharClass> cls(cps.size());
  for (size_t k = 0; k < cps.size(); ++k) cls[k] = classify(cps[k].cp);
  const size_t max_digits = kind == PretokenizerKind::Llama3 ? 3 : 1;

  size_t i = 0;
  while (i < cps.size()) {
    const size_t j = match_at(cps, cls, i, max_digits);
    const size_t begin = cps[i].byte_offset;
    const size_t end = j < cps.size() ? cps[j].byte_offset : text.size();
    pieces.push_back({begin, end});
    i = j;
  }
  return pieces;
}

}  // namespace zerolora::tokenizer
