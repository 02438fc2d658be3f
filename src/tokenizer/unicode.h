// The little Unicode the tokenizers need: UTF-8 decoding/encoding, the letter / number / whitespace
// classes of the byte-level BPE pre-tokenizer regexes (\p{L}, \p{N}, \s), and NFC normalisation
// (Qwen2's tokenizer.json normalizer). Tables come from tools/tokenizer_unicode_tables.py.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::tokenizer {

// One decoded code point and where its bytes start in the UTF-8 text.
struct DecodedCodepoint {
  char32_t cp;
  uint32_t byte_offset;
};

// Decodes UTF-8; an invalid byte becomes U+FFFD spanning that one byte (as Rust's lossy decoding does),
// so byte offsets always cover the input exactly.
std::vector<DecodedCodepoint> decode_utf8(std::string_view text);
void append_utf8(std::string& out, char32_t cp);
// Replaces every invalid UTF-8 sequence by U+FFFD (a token boundary can split a multi-byte character).
std::string make_valid_utf8(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes);

bool is_letter(char32_t cp);      // General_Category L*
bool is_number(char32_t cp);      // General_Category N*
bool is_whitespace(char32_t cp);  // Oniguruma's \s for Unicode: White_Space
uint8_t combining_class(char32_t cp);

// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical composition).
std::string nfc(std::string_view text);

namespace unicode_data {
struct CodepointRange {
  char32_t first, last;
};
struct CombiningClassRun {
  char32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp;
  uint32_t offset;  // into decomposition_codepoints
  uint8_t length;
};
struct Composition {
  char32_t first, second, composite;
};
extern const CodepointRange letter_ranges[];
extern const size_t letter_ranges_count;
extern const CodepointRange number_ranges[];
extern const size_t number_ranges_count;
extern const CombiningClassRun combining_class_runs[];
extern const size_t combining_class_runs_count;
extern const Decomposition decompositions[];
extern const size_t decompositions_count;
extern const char32_t decomposition_codepoints[];
extern const Composition compositions[];
extern const size_t compositions_count;
}  // namespace unicode_data

}  // namespace zerolora::tokenizer
