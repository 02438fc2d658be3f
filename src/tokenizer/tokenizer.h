// The tokenizer interface the data pipeline and the trainer use, and the loader that picks an
// implementation from a Hugging Face model folder:
//   tokenizer.model (+ tokenizer_config.json)  -> SentencePieceTokenizer (HF slow LlamaTokenizer behaviour)
//   tokenizer.json with a byte-level BPE model -> BpeTokenizer (Llama 3, Qwen2)
// When a folder has both, tokenizer.model wins, as FastChat loads the slow tokenizer (use_fast=False).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::tokenizer {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of text. Special tokens written literally in the text ("</s>", "<|eot_id|>") become
  // those tokens. add_bos = HF's add_special_tokens=True: adds what the tokenizer's configuration
  // asks for (BOS for Llama; for tokenizer.json, what its post-processor template adds; EOS too
  // when tokenizer_config.json sets add_eos_token).
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  // Text of ids; always valid UTF-8 (a split multi-byte character becomes U+FFFD).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const = 0;
  // The vocabulary entry of id ("▁Hello", "<0x0A>", "Ġworld", "</s>"), for display.
  virtual std::string token_text(int32_t id) const = 0;
  // The bytes id stands for in running text ("▁Hello" -> " Hello", "<0x0A>" -> "\n", special
  // tokens -> their text): concatenating them gives the decoded text before cleanup.
  virtual std::string token_bytes(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 if none
  virtual int32_t eos_id() const = 0;  // -1 if none
  virtual int32_t unk_id() const = 0;  // -1 if none
  virtual int32_t pad_id() const = 0;  // pad token if configured, else unk (FastChat), else -1
  virtual int32_t token_id(std::string_view piece) const = 0;  // -1 if absent
  virtual bool is_special(int32_t id) const = 0;
  // HF slow LlamaTokenizer's `legacy` flag (fastchat-spec §2.5); byte-level BPE has no such notion.
  virtual bool is_sentencepiece() const = 0;
  virtual bool legacy() const { return false; }
  // One line for logs: kind, vocabulary size, special ids.
  virtual std::string describe() const = 0;
};

// Loads the tokenizer of an HF model folder (see the top of this file). Throws core::Error naming the
// folder and what to do when no supported tokenizer file is there.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

// The id to pad batches with: pad_id(), else eos_id(), else 0. Padding is never attended to nor
// trained on, so any valid id works when the tokenizer has no pad token (Llama 3).
int32_t padding_id_or_fallback(const Tokenizer& tok);

}  // namespace zerolora::tokenizer
