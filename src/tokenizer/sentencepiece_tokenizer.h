// SentencePiece tokenizer.model files with the behaviour of Hugging Face's slow LlamaTokenizer
// (transformers 4.31-4.36, what FastChat trains with): BOS prepended, special tokens written in the
// text recognised, and both `legacy` modes (fastchat-spec §2.5):
//   legacy (default): each text chunk between special tokens is encoded on its own, with
//     SentencePiece's dummy "▁" prefix, so the text after "</s>" starts a new word ("▁US ER :").
//   non-legacy: only the start of the whole text gets the "▁"; chunks after a special token are
//     encoded without it ("USER :"); a chunk that starts with a space keeps it as "▁".
#pragma once
#include <sentencepiece_processor.h>

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/special_tokens.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::tokenizer {

// What tokenizer_config.json says about a slow Llama tokenizer (absent keys keep these defaults,
// as transformers does).
struct SentencePieceConfig {
  bool legacy = true;
  bool add_bos_token = true;
  bool add_eos_token = false;
  std::string bos_token = "<s>";
  std::string eos_token = "</s>";
  std::string unk_token = "<unk>";
  std::string pad_token;  // "" = none (FastChat then pads with unk)
  // added_tokens_decoder entries and additional_special_tokens (ids < 0 are looked up in the model).
  std::vector<AddedToken> added_tokens;
};

// Reads tokenizer_config.json; a missing file gives the defaults. Throws core::Error on bad JSON.
SentencePieceConfig read_sentencepiece_config(const std::string& tokenizer_config_path);

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // model_bytes: the tokenizer.model file; where: its path, for error messages.
  SentencePieceTokenizer(const std::string& model_bytes, SentencePieceConfig config, const std::string& where);
  // tokenizer.model + tokenizer_config.json (optional) of an HF model folder.
  static std::unique_ptr<SentencePieceTokenizer> from_folder(const std::string& model_dir);

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
  bool is_sentencepiece() const override { return true; }
  bool legacy() const override { return config_.legacy; }
  std::string describe() const override;

 private:
  // Ids of the text between special tokens, without BOS/EOS.
  std::vector<int32_t> encode_text(std::string_view text) const;
  void encode_chunk_legacy(std::string_view chunk, std::vector<int32_t>& out) const;
  void encode_chunk_non_legacy(std::string_view chunk, std::vector<int32_t>& out) const;
  int32_t id_of_token_string(const std::string& token) const;  // -1 when absent

  std::string where_;
  SentencePieceConfig config_;
  sentencepiece::SentencePieceProcessor sp_;            // as shipped: dummy prefix on (legacy)
  sentencepiece::SentencePieceProcessor sp_no_prefix_;  // dummy prefix off (non-legacy)
  SpecialTokenMatcher specials_;
  int32_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
  int32_t underline_id_ = -1;  // the lone "▁" piece
  size_t unk_token_length_ = 0;  // pieces of unk_token encoded without prefix (HF's trick)
};

}  // namespace zerolora::tokenizer
