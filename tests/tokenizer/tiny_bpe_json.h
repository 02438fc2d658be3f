// A small byte-level BPE tokenizer.json built in memory for tests that must run without ../shared:
// the 256 byte tokens (id = byte value), then one token per merge in the given order, then
// extra vocabulary entries, then added tokens from id 1000 on.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/pretokenizer.h"

namespace zerolora::test {

// The byte-level form of raw bytes (" " -> "Ġ").
inline std::string byte_level(std::string_view raw) {
  std::string out;
  for (unsigned char b : raw) {
    const char32_t c = tokenizer::byte_level_char(b);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {  // the mapping stays below U+0800
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

struct TinyAddedToken {
  std::string content;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
};

// bos: the added token the post-processor prepends ("" = none).
inline nlohmann::json tiny_bpe_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                    bool ignore_merges, const std::vector<std::string>& extra_vocab,
                                    const std::vector<TinyAddedToken>& added, const std::string& bos,
                                    tokenizer::PretokenizerKind kind = tokenizer::PretokenizerKind::Llama3) {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
  int next = 256;
  json merge_list = json::array();
  for (const auto& [l, r] : merges) {
    vocab[byte_level(l + r)] = next++;
    merge_list.push_back(byte_level(l) + " " + byte_level(r));
  }
  for (const auto& v : extra_vocab) vocab[byte_level(v)] = next++;
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array();
  int bos_id = -1;
  for (size_t k = 0; k < added.size(); ++k) {
    const int id = 1000 + static_cast<int>(k);
    if (added[k].content == bos) bos_id = id;
    j["added_tokens"].push_back({{"id", id}, {"content", added[k].content}, {"special", added[k].special},
                                 {"lstrip", added[k].lstrip}, {"rstrip", added[k].rstrip},
                                 {"single_word", false}, {"normalized", false}});
  }
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         json::array({{{"type", "Split"},
                                       {"pattern", {{"Regex", tokenizer::pretokenizer_regex(kind)}}},
                                       {"behavior", "Isolated"},
                                       {"invert", false}},
                                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  if (bos_id >= 0) {
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", ignore_merges},
                {"unk_token", nullptr}};
  return j;
}

// A Llama-3-like tokenizer: a few merges for common text, the Llama 3 header/turn tokens and
// ChatML's, BOS <|begin_of_text|>.
inline nlohmann::json tiny_llama3_like_json() {
  return tiny_bpe_json({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"}, {" w", "or"},
                        {"l", "d"}, {" wor", "ld"}, {"\n", "\n"}, {"u", "s"}, {"e", "r"}, {"us", "er"}},
                       true, {},
                       {{"<|begin_of_text|>"}, {"<|end_of_text|>"}, {"<|start_header_id|>"}, {"<|end_header_id|>"},
                        {"<|eot_id|>"}, {"<|im_start|>"}, {"<|im_end|>"}},
                       "<|begin_of_text|>");
}

}  // namespace zerolora::test
