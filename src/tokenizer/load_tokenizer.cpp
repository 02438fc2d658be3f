#include <filesystem>

#include "core/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/sentencepiece_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::tokenizer {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  core::check(fs::is_directory(model_dir), model_dir, "is not a folder",
              "pass --model_name_or_path a Hugging Face model folder (with tokenizer.model or tokenizer.json)");
  // FastChat loads the slow tokenizer (use_fast=False), which reads tokenizer.model; Llama 3 folders
  // also hold a tiktoken file named tokenizer.model, which is not a SentencePiece model.
  const fs::path sp_model = fs::path(model_dir) / "tokenizer.model";
  const fs::path bpe_json = fs::path(model_dir) / "tokenizer.json";
  if (fs::exists(sp_model)) {
    try {
      return SentencePieceTokenizer::from_folder(model_dir);
    } catch (const core::Error&) {
      if (!fs::exists(bpe_json)) throw;
    }
  }
  if (fs::exists(bpe_json)) return BpeTokenizer::from_folder(model_dir);
  throw core::Error(model_dir, "has neither tokenizer.model nor tokenizer.json",
                    "copy the tokenizer files of the base model into the folder");
}

int32_t padding_id_or_fallback(const Tokenizer& tok) {
  if (tok.pad_id() >= 0) return tok.pad_id();
  if (tok.eos_id() >= 0) return tok.eos_id();
  return 0;
}

}  // namespace zerolora::tokenizer
