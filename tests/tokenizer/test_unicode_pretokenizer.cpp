// Unicode helpers (classes, UTF-8, NFC) and the hand-written pre-tokenizer regexes.
#include <gtest/gtest.h>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

using namespace zerolora::tokenizer;

namespace {

std::vector<std::string> pieces(std::string_view text, PretokenizerKind kind) {
  std::vector<std::string> out;
  for (const TextPiece& p : pretokenize(text, kind)) out.emplace_back(text.substr(p.begin, p.end - p.begin));
  return out;
}

}  // namespace

TEST(Unicode, Classes) {
  EXPECT_TRUE(is_letter(U'a'));
  EXPECT_TRUE(is_letter(U'\u00e9'));
  EXPECT_TRUE(is_letter(U'\u4f60'));      // CJK ideograph (Lo)
  EXPECT_TRUE(is_letter(U'\U0001D518'));  // mathematical fraktur (above the BMP)
  EXPECT_FALSE(is_letter(U'1'));
  EXPECT_FALSE(is_letter(U'\u0301'));     // combining mark (Mn), not a letter
  EXPECT_TRUE(is_number(U'\u0663'));      // Arabic-Indic digit (Nd)
  EXPECT_TRUE(is_number(U'\u00bd'));      // vulgar fraction (No)
  EXPECT_TRUE(is_number(U'\u2460'));      // circled digit (No)
  EXPECT_FALSE(is_number(U'x'));
  EXPECT_TRUE(is_whitespace(U'\u3000'));
  EXPECT_TRUE(is_whitespace(U'\u00a0'));
  EXPECT_FALSE(is_whitespace(U'\u200b'));  // zero-width space is not White_Space
  EXPECT_EQ(combining_class(U'\u0301'), 230);
  EXPECT_EQ(combining_class(U'\u0323'), 220);
  EXPECT_EQ(combining_class(U'a'), 0);
}

TEST(Unicode, Utf8DecodeAndRepair) {
  auto cps = decode_utf8("a\xC3\xA9\xF0\x9F\x98\x80");
  ASSERT_EQ(cps.size(), 3u);
  EXPECT_EQ(cps[1].cp, U'\u00e9');
  EXPECT_EQ(cps[2].cp, U'\U0001F600');
  EXPECT_EQ(cps[2].byte_offset, 3u);
  EXPECT_TRUE(is_valid_utf8("caf\xC3\xA9"));
  EXPECT_FALSE(is_valid_utf8("caf\xC3"));
  EXPECT_EQ(make_valid_utf8("ab\xC3"), "ab\xEF\xBF\xBD");       // truncated sequence -> U+FFFD
  EXPECT_EQ(make_valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate bytes
}

TEST(Unicode, NfcComposesReordersAndKeepsComposed) {
  EXPECT_EQ(nfc("e\u0301"), "\u00e9");
  EXPECT_EQ(nfc("A\u030a"), "\u00c5");
  EXPECT_EQ(nfc("\u212b"), "\u00c5");                  // singleton decomposition (Angstrom sign)
  EXPECT_EQ(nfc("\u1112\u1161\u11ab"), "\ud55c");      // Hangul L+V+T compose by arithmetic
  EXPECT_EQ(nfc("\ud55c"), "\ud55c");
  EXPECT_EQ(nfc("q\u0307\u0323"), "q\u0323\u0307");     // canonical reordering, no composite exists
  EXPECT_EQ(nfc("\u1e0b\u0323"), "\u1e0d\u0307");       // d-dot-above + dot-below -> d-dot-below + dot-above
  EXPECT_EQ(nfc("caf\u00e9 plain"), "caf\u00e9 plain");
  EXPECT_EQ(nfc("\u0958"), "\u0915\u093c");             // composition exclusion stays decomposed
  EXPECT_EQ(nfc("ascii only"), "ascii only");
}

TEST(Pretokenizer, Llama3RegexPieces) {
  EXPECT_EQ(pieces("Hello world's 12345  \n x", PretokenizerKind::Llama3),
            (std::vector<std::string>{"Hello", " world", "'s", " ", "123", "45", "  \n", " x"}));
  // the contraction alternative comes first, even inside a word; it is case-insensitive
  EXPECT_EQ(pieces("'sure I'LL", PretokenizerKind::Llama3),
            (std::vector<std::string>{"'s", "ure", " I", "'LL"}));
  // a punctuation run takes one leading space and trailing newlines
  EXPECT_EQ(pieces("a ...\n\nb", PretokenizerKind::Llama3), (std::vector<std::string>{"a", " ...\n\n", "b"}));
  // whitespace before a word: all but the last space form a piece, the last joins the word
  EXPECT_EQ(pieces("a   b", PretokenizerKind::Llama3), (std::vector<std::string>{"a", "  ", " b"}));
  // trailing whitespace is one piece
  EXPECT_EQ(pieces("a  ", PretokenizerKind::Llama3), (std::vector<std::string>{"a", "  "}));
  // a non-letter, non-digit character may lead a letter run, but not \n
  EXPECT_EQ(pieces("$abc\nabc", PretokenizerKind::Llama3), (std::vector<std::string>{"$abc", "\n", "abc"}));
  EXPECT_TRUE(pieces("", PretokenizerKind::Llama3).empty());
}

TEST(Pretokenizer, Qwen2SplitsDigitsOneByOne) {
  EXPECT_EQ(pieces("x 2024", PretokenizerKind::Qwen2), (std::vector<std::string>{"x", " ", "2", "0", "2", "4"}));
  EXPECT_EQ(pieces("x 2024", PretokenizerKind::Llama3), (std::vector<std::string>{"x", " ", "202", "4"}));
}

TEST(Pretokenizer, PiecesCoverTheTextExactly) {
  const std::string text = "mixed \xE4\xBD\xA0\xE5\xA5\xBD 3.14\t\t\r\n 'd \xF0\x9F\x98\x80!! \xC2\xA0 end ";
  for (auto kind : {PretokenizerKind::Llama3, PretokenizerKind::Qwen2}) {
    std::string joined;
    size_t expected_begin = 0;
    for (const TextPiece& p : pretokenize(text, kind)) {
      EXPECT_EQ(p.begin, expected_begin);
      EXPECT_GT(p.end, p.begin);
      joined += text.substr(p.begin, p.end - p.begin);
      expected_begin = p.end;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST(Pretokenizer, RecognisesExactlyTheKnownRegexes) {
  PretokenizerKind kind;
  EXPECT_TRUE(pretokenizer_kind_from_regex(pretokenizer_regex(PretokenizerKind::Qwen2), &kind));
  EXPECT_EQ(kind, PretokenizerKind::Qwen2);
  EXPECT_TRUE(pretokenizer_kind_from_regex(pretokenizer_regex(PretokenizerKind::Llama3), &kind));
  EXPECT_EQ(kind, PretokenizerKind::Llama3);
  EXPECT_FALSE(pretokenizer_kind_from_regex(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+)", &kind));
}
