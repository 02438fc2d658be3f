// Shared by the data tests: the committed tiny SentencePiece model, goldens, conversation builders.
#pragma once
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/conversation.h"
#include "data/masking.h"
#include "test_util.h"
#include "tokenizer/sentencepiece_tokenizer.h"

namespace zerolora::test {

inline std::string golden_path(const std::string& name) {
  return std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/tokenizer/" + name;
}

inline nlohmann::json read_golden_json(const std::string& name) {
  std::ifstream in(golden_path(name));
  EXPECT_TRUE(in.good()) << name;
  return nlohmann::json::parse(in);
}

// A 600-piece SentencePiece BPE model made like Llama's (tools/tokenizer_reference.py tiny).
inline std::unique_ptr<tokenizer::SentencePieceTokenizer> tiny_sentencepiece(bool legacy) {
  tokenizer::SentencePieceConfig config;
  config.legacy = legacy;
  const std::string path = golden_path("tiny_llama_sp.model");
  return std::make_unique<tokenizer::SentencePieceTokenizer>(read_file(path), config, path);
}

inline std::unique_ptr<tokenizer::SentencePieceTokenizer> sentencepiece_at(const std::string& path, bool legacy) {
  tokenizer::SentencePieceConfig config;
  config.legacy = legacy;
  return std::make_unique<tokenizer::SentencePieceTokenizer>(read_file(path), config, path);
}

// Alternating human/gpt messages, starting with human.
inline data::Conversation make_conversation(const std::vector<std::string>& texts, const std::string& id = "c") {
  data::Conversation c;
  c.id = id;
  for (size_t k = 0; k < texts.size(); ++k)
    c.messages.push_back({k % 2 == 0 ? data::Role::User : data::Role::Assistant, texts[k]});
  return c;
}

// [start, end) runs of trained labels.
inline std::vector<std::pair<int, int>> trained_spans(const std::vector<int32_t>& labels) {
  std::vector<std::pair<int, int>> spans;
  int start = -1;
  for (int k = 0; k <= static_cast<int>(labels.size()); ++k) {
    const bool trained = k < static_cast<int>(labels.size()) && labels[k] != data::kIgnoreIndex;
    if (trained && start < 0) start = k;
    if (!trained && start >= 0) {
      spans.emplace_back(start, k);
      start = -1;
    }
  }
  return spans;
}

// The text of the trained tokens, spans joined with "|".
inline std::string trained_text(const tokenizer::Tokenizer& tok, const std::vector<int32_t>& ids,
                                const std::vector<int32_t>& labels) {
  std::string out;
  bool prev = false;
  for (size_t k = 0; k < ids.size(); ++k) {
    const bool trained = labels[k] != data::kIgnoreIndex;
    if (trained && !prev && !out.empty()) out += "|";
    if (trained) out += tok.token_bytes(ids[k]);
    prev = trained;
  }
  return out;
}

// CRC-32 (IEEE, as Python's zlib.crc32) of ids as little-endian int32.
inline uint32_t crc32_of_ids(const std::vector<int32_t>& ids) {
  uint32_t crc = 0xFFFFFFFFu;
  for (int32_t id : ids) {
    for (int b = 0; b < 4; ++b) {
      crc ^= static_cast<uint8_t>(static_cast<uint32_t>(id) >> (8 * b));
      for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
  }
  return ~crc;
}

}  // namespace zerolora::test
