// A small byte-level BPE trainer: learns merges from a text corpus and writes a Hugging Face
// tokenizer.json (Llama 3 pre-tokenizer regex, ByteLevel, BOS post-processing) that BpeTokenizer
// loads. Used by `zerolora demo` and the tests so that nothing needs downloading.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace zerolora::tokenizer {

struct BpeTrainerOptions {
  int vocab_size = 512;                 // bytes (256) + merges + special tokens
  std::vector<std::string> special_tokens = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"};
  std::string bos_token = "<s>";        // prepended by the post-processor
};

// Special tokens take ids 0.. (in order), the 256 byte tokens follow, then one token per merge.
nlohmann::json train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainerOptions& options);

}  // namespace zerolora::tokenizer
