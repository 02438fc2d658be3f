// Byte-level BPE tokenizer.json files (Hugging Face tokenizers format) as Llama 3 and Qwen2 ship them:
//   added tokens (split out first, leftmost-longest) -> normalizer (none or NFC) -> Split pre-tokenizer
//   (the Llama 3 or Qwen2 regex, see pretokenizer.h) -> ByteLevel (bytes as symbols) -> BPE merges by
//   rank (ignore_merges: a piece that is a vocabulary entry is taken whole) -> post-processor template
//   (Llama 3 prepends <|begin_of_text|>).
// Internally tokens are raw byte strings; the GPT-2 byte<->character mapping is undone at load.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/special_tokens.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::tokenizer {

// Special token names a folder may give in tokenizer_config.json (tokenizer.json does not say which
// token is EOS or PAD). Empty = not given.
struct BpeSpecialNames {
  std::string bos_token, eos_token, pad_token;
};

class BpeTokenizer final : public Tokenizer {
 public:
  // json_text: the tokenizer.json contents; where: its path, for error messages.
  BpeTokenizer(const std::string& json_text, const std::string& where, const BpeSpecialNames& names = {});
  // tokenizer.json (+ tokenizer_config.json for the eos/pad names) of an HF model folder.
  static std::unique_ptr<BpeTokenizer> from_folder(const std::string& model_dir);

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const override;
  std::string token_text(int32_t id) const override;
  std::string token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t unk_id() const override { return unk_id_; }
  int32_t pad_id() const override { return pad_id_; }
  int32_t token_id(std::string_view piece) const override;
  bool is_special(int32_t id) const override;
  bool is_sentencepiece() const override { return false; }
  std::string describe() const override;

  // BPE of one pre-tokenized piece (raw bytes), appended to out. Public for tests and benchmarks.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  void load(const std::string& json_text, const BpeSpecialNames& names);
  void encode_plain_text(std::string_view text, std::vector<int32_t>& out) const;

  std::string where_;
  std::vector<std::string> token_strings_;          // id -> tokenizer.json string ("Ġworld")
  std::vector<std::string> token_raw_bytes_;        // id -> bytes (" world")
  std::unordered_map<std::string, int32_t> id_by_bytes_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_token_[256];                         // id of each single byte, -1 if missing
  SpecialTokenMatcher added_;
  PretokenizerKind pretokenizer_ = PretokenizerKind::Llama3;
  bool nfc_ = false;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  std::vector<int32_t> prefix_ids_, suffix_ids_;   // post-processor template around the text
  int32_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
};

// GPT-2's byte <-> printable character mapping used by ByteLevel (byte 0x20 ' ' <-> U+0120 'Ġ').
char32_t byte_level_char(uint8_t byte);
// The bytes of a byte-level string, or false when it holds a character outside the mapping.
bool byte_level_decode(std::string_view text, std::string* bytes);

}  // namespace zerolora::tokenizer
