// A message far longer than model_max_length tokens (issue 18: one 10 MB message cost 1.6 GiB RSS because it
// was tokenised whole before truncation) is cut before tokenising, and the sample stays exactly what
// tokenising the whole text and truncating gives (HF's order): same input_ids, same labels, for SentencePiece
// (FastChat's vicuna path, legacy and not, and the boundary path) and byte-level BPE, with the long text as
// the question, the answer or the system prompt, and texts made to stress a cut (no spaces, one repeated
// character, runs of spaces and newlines, multi-byte characters).
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "data/masking.h"
#include "data_test_util.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tiny_bpe_json.h"

using namespace zerolora;
using namespace zerolora::data;

namespace {

// Forwards to a tokenizer and records the longest text it was asked to encode.
class CountingTokenizer final : public tokenizer::Tokenizer {
 public:
  explicit CountingTokenizer(const tokenizer::Tokenizer& inner) : inner_(inner) {}
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    longest = std::max(longest, text.size());
    return inner_.encode(text, add_bos);
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    return inner_.decode(ids, skip_special);
  }
  std::string token_text(int32_t id) const override { return inner_.token_text(id); }
  std::string token_bytes(int32_t id) const override { return inner_.token_bytes(id); }
  int32_t vocab_size() const override { return inner_.vocab_size(); }
  int32_t bos_id() const override { return inner_.bos_id(); }
  int32_t eos_id() const override { return inner_.eos_id(); }
  int32_t unk_id() const override { return inner_.unk_id(); }
  int32_t pad_id() const override { return inner_.pad_id(); }
  int32_t token_id(std::string_view piece) const override { return inner_.token_id(piece); }
  bool is_special(int32_t id) const override { return inner_.is_special(id); }
  bool is_sentencepiece() const override { return inner_.is_sentencepiece(); }
  bool legacy() const override { return inner_.legacy(); }
  std::string describe() const override { return inner_.describe(); }
  mutable size_t longest = 0;

 private:
  const tokenizer::Tokenizer& inner_;
};

// `bytes` bytes of text of one kind.
std::string long_text(const std::string& kind, size_t bytes) {
  std::string unit;
  if (kind == "words") unit = "The quick brown fox jumps over 13 lazy dogs, then 2,048 more; ";
  if (kind == "no_spaces") unit = "abcdefghijklmnopqrstuvwxyz0123456789";
  if (kind == "one_char") unit = "a";
  if (kind == "whitespace") unit = "a  \n\n   b\t\t c    \n";
  if (kind == "multibyte") unit = "h\xC3\xA9llo w\xC3\xB6rld \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E ";
  std::string text;
  while (text.size() < bytes) text += unit;
  return text;
}

struct Case {
  std::string name;
  const tokenizer::Tokenizer* tok;
  TemplateStyle style;
};

// What tokenising the whole conversation gives (no cut): the two preprocess paths themselves.
PreprocessResult whole_text_result(const Conversation& conv, TemplateStyle style, const tokenizer::Tokenizer& tok,
                                   int64_t max_len) {
  return style == TemplateStyle::VicunaV11 && tok.is_sentencepiece()
             ? preprocess_vicuna_fastchat(conv, tok, max_len)
             : preprocess_by_boundaries(conv, style, tok, max_len);
}

std::unique_ptr<tokenizer::BpeTokenizer> trained_bpe() {
  std::vector<std::string> corpus;
  for (const char* kind : {"words", "no_spaces", "one_char", "whitespace", "multibyte"})
    corpus.push_back(long_text(kind, 4000));
  tokenizer::BpeTrainerOptions o;
  o.vocab_size = 400;
  return std::make_unique<tokenizer::BpeTokenizer>(tokenizer::train_byte_level_bpe(corpus, o).dump(), "trained");
}

}  // namespace

TEST(LongMessages, CutBeforeTokenisingGivesTheWholeTextsSample) {
  const auto sp_legacy = test::tiny_sentencepiece(true), sp = test::tiny_sentencepiece(false);
  const auto llama3 = std::make_unique<tokenizer::BpeTokenizer>(test::tiny_llama3_like_json().dump(), "tiny-llama3");
  const auto bpe = trained_bpe();
  const std::vector<Case> cases = {{"sentencepiece legacy, vicuna", sp_legacy.get(), TemplateStyle::VicunaV11},
                                   {"sentencepiece, vicuna", sp.get(), TemplateStyle::VicunaV11},
                                   {"sentencepiece, llama-2", sp.get(), TemplateStyle::Llama2},
                                   {"llama-3-like BPE, llama-3", llama3.get(), TemplateStyle::Llama3},
                                   {"trained BPE, chatml", bpe.get(), TemplateStyle::ChatML}};
  int compared = 0, cut = 0;
  std::string not_cut;
  for (const Case& c : cases)
    for (const char* kind : {"words", "no_spaces", "one_char", "whitespace", "multibyte"})
      for (const int64_t max_len : {16, 100})
        for (int where = 0; where < 3; ++where) {  // the question, the answer, the system prompt
          const std::string text = long_text(kind, 40000);
          Conversation conv = test::make_conversation({"short question", "short answer", "again?", "yes"});
          if (where == 2) {
            conv.has_system = true;
            conv.system = text;
          } else {
            conv.messages[size_t(where)].text = text;
          }
          const PreprocessResult want = whole_text_result(conv, c.style, *c.tok, max_len);
          CountingTokenizer counting(*c.tok);
          const PreprocessResult got = preprocess_conversation(conv, c.style, counting, max_len);
          const std::string what = c.name + ", " + kind + ", model_max_length " + std::to_string(max_len) +
                                   ", long " + (where == 0 ? "question" : where == 1 ? "answer" : "system prompt");
          EXPECT_EQ(got.input_ids, want.input_ids) << what;
          EXPECT_EQ(got.labels, want.labels) << what;
          EXPECT_EQ(got.truncated, want.truncated) << what;
          if (counting.longest < text.size()) ++cut;
          else not_cut += what + "; ";
          ++compared;
        }
  EXPECT_EQ(compared, 5 * 5 * 2 * 3);
  // a text whose tokens are long (the trained BPE merges runs of one character into long tokens) may hold
  // fewer than 2 x model_max_length + 64 tokens in 40 kB: then it is tokenised whole, as it should be
  EXPECT_GE(cut, compared * 9 / 10) << "not cut: " << not_cut;
  std::printf("%d of %d long texts cut before tokenising; not cut: %s\n", cut, compared, not_cut.c_str());
}

// The 10 MB message of the issue: the tokenizer never sees more than a few kB of it.
TEST(LongMessages, TenMegabyteMessageIsNeverTokenisedWhole) {
  const auto sp = test::tiny_sentencepiece(false);
  CountingTokenizer counting(*sp);
  const std::string huge = long_text("words", 10 << 20);
  const Conversation conv = test::make_conversation({huge, "ok"});
  const PreprocessResult r = preprocess_conversation(conv, TemplateStyle::VicunaV11, counting, 512);
  EXPECT_EQ(r.input_ids.size(), 512u);
  EXPECT_TRUE(r.truncated);
  // the cut holds 2 x 512 + 64 tokens at 4 bytes per token first, doubled while it holds fewer
  EXPECT_LT(counting.longest, size_t(64) << 10) << "the tokenizer saw " << counting.longest << " bytes";
  // the whole-text sample, for the first 512 tokens: the prompt up to the cut is the same text
  const std::string prompt = render_prompt(TemplateStyle::VicunaV11, conv);
  std::vector<int32_t> want = sp->encode(std::string_view(prompt).substr(0, 200000), true);
  want.resize(512);
  EXPECT_EQ(r.input_ids, want);
}

TEST(LongMessages, PrefixForModelMaxLengthHoldsEnoughTokensAndWholeCharacters) {
  const auto sp = test::tiny_sentencepiece(false);
  const std::string text = long_text("multibyte", 100000);
  const std::string prefix = prefix_for_model_max_length(text, *sp, 50);
  EXPECT_LT(prefix.size(), text.size());
  EXPECT_EQ(text.compare(0, prefix.size(), prefix), 0);
  EXPECT_GE(int64_t(sp->encode(prefix, false).size()), 2 * 50 + 64);
  EXPECT_NE(static_cast<unsigned char>(text[prefix.size()]) & 0xC0, 0x80) << "cut inside a character";
  // short texts are kept whole
  EXPECT_EQ(prefix_for_model_max_length("short", *sp, 50), "short");
}
