// The Split pre-tokenizers of byte-level BPE tokenizer.json files, hand-written for the two regexes
// that Llama 3 and Qwen2 ship (no regex engine with \p{L} is needed):
//
//   Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:   the same with \p{N} (one digit per piece) instead of \p{N}{1,3}
//
// Behaviour "Isolated": every match is a piece; since the alternatives together match any character,
// the pieces cover the text. Semantics follow Oniguruma (what HF tokenizers uses): leftmost match,
// alternatives tried in order, greedy quantifiers with backtracking, \s = Unicode White_Space,
// case-insensitive contractions (so "'S" and "'ſ" match too).
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::tokenizer {

enum class PretokenizerKind {
  Llama3,  // \p{N}{1,3}
  Qwen2,   // \p{N}
};

// The kind whose regex is exactly `pattern`, or false when the pattern is not one we implement.
bool pretokenizer_kind_from_regex(std::string_view pattern, PretokenizerKind* kind);
std::string pretokenizer_regex(PretokenizerKind kind);

// A piece as a byte range of the text.
struct TextPiece {
  size_t begin, end;
};

// Splits UTF-8 text into the pieces the regex matches, in order.
std::vector<TextPiece> pretokenize(std::string_view text, PretokenizerKind kind);

}  // namespace zerolora::tokenizer
