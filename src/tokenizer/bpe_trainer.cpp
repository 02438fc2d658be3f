#include "tokenizer/bpe_trainer.h"

#include <map>

#include "core/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace zerolora::tokenizer {

namespace {

// the byte-level alphabet spelling of one byte (" " -> "Ġ")
std::string byte_symbol(unsigned char b) {
  std::string s;
  append_utf8(s, byte_level_char(b));
  return s;
}

}  // namespace

nlohmann::json train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainerOptions& opt) {
  const int specials = int(opt.special_tokens.size());
  core::check(opt.vocab_size >= 256 + specials, "bpe trainer", "vocab_size must hold the 256 bytes and the specials");
  // word (pre-token) frequencies, each word as a sequence of byte symbols
  std::map<std::vector<std::string>, int64_t> words;
  for (const auto& text : corpus)
    for (const auto& piece : pretokenize(text, PretokenizerKind::Llama3)) {
      std::vector<std::string> syms;
      for (size_t i = piece.begin; i < piece.end; ++i) syms.push_back(byte_symbol(static_cast<unsigned char>(text[i])));
      words[syms] += 1;
    }
  std::vector<std::pair<std::string, std::string>> merges;
  const int target_merges = opt.vocab_size - 256 - specials;
  while (int(merges.size()) < target_merges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;  // ties: the lexicographically first pair (deterministic)
    if (best->second < 2) break;
    const auto [l, r] = best->first;
    merges.push_back({l, r});
    std::map<std::vector<std::string>, int64_t> next;
    for (const auto& [w, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == l && w[i + 1] == r) {
          out.push_back(l + r);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      next[out] += n;
    }
    words.swap(next);
  }

  using nlohmann::json;
  json vocab = json::object();
  json added = json::array();
  int id = 0;
  int bos_id = -1;
  for (const auto& s : opt.special_tokens) {
    if (s == opt.bos_token) bos_id = id;
    added.push_back({{"id", id}, {"content", s}, {"special", true}, {"lstrip", false}, {"rstrip", false},
                     {"single_word", false}, {"normalized", false}});
    vocab[s] = id++;
  }
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(static_cast<unsigned char>(b))] = id++;
  json merge_list = json::array();
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = id++;
    merge_list.push_back(l + " " + r);
  }
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         json::array({{{"type", "Split"},
                                       {"pattern", {{"Regex", pretokenizer_regex(PretokenizerKind::Llama3)}}},
                                       {"behavior", "Isolated"},
                                       {"invert", false}},
                                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  if (bos_id >= 0)
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", opt.bos_token}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{opt.bos_token, {{"id", opt.bos_token}, {"ids", {bos_id}}, {"tokens", {opt.bos_token}}}}}}};
  else
    j["post_processor"] = nullptr;
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}, {"ignore_merges", false},
                {"unk_token", nullptr}};
  return j;
}

}  // namespace zerolora::tokenizer
