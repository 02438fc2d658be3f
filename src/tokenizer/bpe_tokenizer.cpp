#include "tokenizer/bpe_tokenizer.h"

#include <climits>
#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/unicode.h"

namespace zerolora::tokenizer {

namespace {

using nlohmann::json;

using core::read_whole_file;

// bytes_to_unicode() of GPT-2: printable bytes map to themselves, the others to U+0100 onwards.
const std::array<char32_t, 256>& byte_to_char_table() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

const std::unordered_map<char32_t, uint8_t>& char_to_byte_table() {
  static const std::unordered_map<char32_t, uint8_t> table = [] {
    std::unordered_map<char32_t, uint8_t> t;
    for (int b = 0; b < 256; ++b) t[byte_to_char_table()[b]] = static_cast<uint8_t>(b);
    return t;
  }();
  return table;
}

std::string unsupported_fix() {
  return "zerolora reads byte-level BPE tokenizer.json files (Llama 3, Qwen2); for SentencePiece models "
         "(Llama 1/2, Mistral) put tokenizer.model in the folder";
}

}  // namespace

char32_t byte_level_char(uint8_t byte) { return byte_to_char_table()[byte]; }

bool byte_level_decode(std::string_view text, std::string* bytes) {
  bytes->clear();
  for (const auto& d : decode_utf8(text)) {
    auto it = char_to_byte_table().find(d.cp);
    if (it == char_to_byte_table().end()) return false;
    bytes->push_back(static_cast<char>(it->second));
  }
  return true;
}

// A token id from the file: an integer in [0, 2^31); anything else is a clear error, never a narrowing.
static int32_t token_id_from_json(const json& v, const std::string& where) {
  core::check(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX, where,
              "token id " + v.dump() + " is not an integer in [0, 2^31)",
              "restore tokenizer.json from the model's original folder");
  return static_cast<int32_t>(v.get<int64_t>());
}

BpeTokenizer::BpeTokenizer(const std::string& json_text, const std::string& where, const BpeSpecialNames& names)
    : where_(where) {
  try {
    load(json_text, names);
  } catch (const json::exception& e) {
    // a field of the wrong type somewhere in the file: still one clear error, never a crash
    throw core::Error(where_, std::string("has a malformed field (") + e.what() + ")",
                      "restore tokenizer.json from the model's original folder");
  }
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_folder(const std::string& model_dir) {
  const auto path = (std::filesystem::path(model_dir) / "tokenizer.json").string();
  const auto config_path = (std::filesystem::path(model_dir) / "tokenizer_config.json").string();
  BpeSpecialNames names;
  if (std::filesystem::exists(config_path)) {
    json config;
    try {
      config = json::parse(read_whole_file(config_path));
    } catch (const json::exception& e) {
      throw core::Error(config_path, std::string("is not valid JSON (") + e.what() + ")",
                        "restore the file from the model's original folder");
    }
    auto name = [&](const char* key, std::string* out) {
      if (!config.is_object() || !config.contains(key)) return;
      const json& v = config[key];
      if (v.is_string()) *out = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) *out = v["content"].get<std::string>();
    };
    name("bos_token", &names.bos_token);
    name("eos_token", &names.eos_token);
    name("pad_token", &names.pad_token);
  }
  return std::make_unique<BpeTokenizer>(read_whole_file(path), path, names);
}

void BpeTokenizer::load(const std::string& json_text, const BpeSpecialNames& names) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw core::Error(where_, std::string("is not valid JSON (") + e.what() + ")",
                      "restore tokenizer.json from the model's original folder");
  }
  core::check(j.is_object() && j.contains("model") && j["model"].is_object(), where_, "has no \"model\" object",
              "restore tokenizer.json from the model's original folder");
  const json& model = j["model"];
  const std::string type = model.value("type", std::string("BPE"));
  core::check(type == "BPE", where_ + ":model.type", "is \"" + type + "\", not \"BPE\"", unsupported_fix());
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    core::check(!model.contains(key) || model[key].is_null() || model[key] == "", where_ + ":model." + key,
                "is set, which byte-level BPE does not use", unsupported_fix());
  ignore_merges_ = model.value("ignore_merges", false);

  // Vocabulary: tokenizer.json strings are byte-level encoded; keep both forms.
  core::check(model.contains("vocab") && model["vocab"].is_object(), where_ + ":model.vocab", "is missing",
              "restore tokenizer.json from the model's original folder");
  int32_t max_id = -1;
  for (const auto& [text, id_json] : model["vocab"].items()) max_id = std::max(max_id, token_id_from_json(id_json, where_ + ":model.vocab"));
  token_strings_.assign(static_cast<size_t>(max_id + 1), "");
  token_raw_bytes_.assign(static_cast<size_t>(max_id + 1), "");
  id_by_bytes_.reserve(static_cast<size_t>(max_id + 1) * 2);
  std::fill(std::begin(byte_token_), std::end(byte_token_), -1);
  std::string bytes;
  for (const auto& [text, id_json] : model["vocab"].items()) {
    const int32_t id = token_id_from_json(id_json, where_ + ":model.vocab");
    core::check(id >= 0, where_ + ":model.vocab", "token \"" + text + "\" has a negative id",
                "restore tokenizer.json from the model's original folder");
    token_strings_[id] = text;
    if (!byte_level_decode(text, &bytes)) bytes = text;  // not byte-level: can only be matched literally
    token_raw_bytes_[id] = bytes;
    id_by_bytes_.emplace(bytes, id);
    if (bytes.size() == 1) byte_token_[static_cast<uint8_t>(bytes[0])] = id;
  }

  // Merges, as "left right" strings (older files) or ["left", "right"] pairs (newer files).
  core::check(model.contains("merges") && model["merges"].is_array(), where_ + ":model.merges", "is missing",
              "restore tokenizer.json from the model's original folder");
  const json& merges = model["merges"];
  merges_.reserve(merges.size() * 2);
  std::string left, right, left_bytes, right_bytes;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      core::check(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
                  where_ + ":model.merges[" + std::to_string(rank) + "]", "\"" + s + "\" is not two tokens",
                  "restore tokenizer.json from the model's original folder");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {
      core::check(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                  where_ + ":model.merges[" + std::to_string(rank) + "]", "is not a pair of tokens",
                  "restore tokenizer.json from the model's original folder");
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    if (!byte_level_decode(left, &left_bytes)) left_bytes = left;
    if (!byte_level_decode(right, &right_bytes)) right_bytes = right;
    auto l = id_by_bytes_.find(left_bytes), r = id_by_bytes_.find(right_bytes),
         merged = id_by_bytes_.find(left_bytes + right_bytes);
    core::check(l != id_by_bytes_.end() && r != id_by_bytes_.end() && merged != id_by_bytes_.end(),
                where_ + ":model.merges[" + std::to_string(rank) + "]",
                "\"" + left + " " + right + "\" uses a token that is not in the vocabulary",
                "restore tokenizer.json from the model's original folder");
    merges_.emplace(pair_key(l->second, r->second), Merge{static_cast<int32_t>(rank), merged->second});
  }

  // Added tokens (special or not): matched in the raw text before anything else.
  std::vector<AddedToken> added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& t : j["added_tokens"]) {
      AddedToken a;
      a.content = t.value("content", std::string());
      a.id = t.contains("id") ? token_id_from_json(t["id"], where_ + ":added_tokens") : -1;
      a.special = t.value("special", false);
      a.lstrip = t.value("lstrip", false);
      a.rstrip = t.value("rstrip", false);
      a.single_word = t.value("single_word", false);
      core::check(!a.content.empty() && a.id >= 0, where_ + ":added_tokens", "has an entry without content or id",
                  "restore tokenizer.json from the model's original folder");
      max_id = std::max(max_id, a.id);
      added.push_back(a);
    }
  }
  added_ = SpecialTokenMatcher(std::move(added));
  vocab_size_ = max_id + 1;

  // Normalizer: none or NFC (Qwen2).
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    std::vector<json> parts;
    if (n.value("type", "") == "Sequence" && n.contains("normalizers")) parts = n["normalizers"].get<std::vector<json>>();
    else parts.push_back(n);
    for (const json& p : parts) {
      const std::string t = p.value("type", "");
      core::check(t == "NFC", where_ + ":normalizer", "type \"" + t + "\" is not supported (only NFC is)",
                  unsupported_fix());
      nfc_ = true;
    }
  }

  // Pre-tokenizer: Split(Llama 3 or Qwen2 regex, Isolated) followed by ByteLevel(use_regex=false).
  core::check(j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object(), where_ + ":pre_tokenizer",
              "is missing", unsupported_fix());
  const json& pre = j["pre_tokenizer"];
  std::vector<json> steps;
  if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) steps = pre["pretokenizers"].get<std::vector<json>>();
  else steps.push_back(pre);
  bool have_split = false, have_byte_level = false;
  for (const json& step : steps) {
    const std::string t = step.value("type", "");
    if (t == "Split") {
      const std::string pattern = step.contains("pattern") ? step["pattern"].value("Regex", std::string()) : "";
      core::check(pretokenizer_kind_from_regex(pattern, &pretokenizer_), where_ + ":pre_tokenizer",
                  "Split regex is neither Llama 3's nor Qwen2's: " + pattern, unsupported_fix());
      core::check(step.value("behavior", "Isolated") == "Isolated" && !step.value("invert", false),
                  where_ + ":pre_tokenizer", "Split must be behavior Isolated, invert false", unsupported_fix());
      have_split = true;
    } else if (t == "ByteLevel") {
      core::check(!step.value("use_regex", true) || have_split, where_ + ":pre_tokenizer",
                  "ByteLevel with its own GPT-2 regex is not supported", unsupported_fix());
      add_prefix_space_ = step.value("add_prefix_space", false);
      have_byte_level = true;
    } else {
      throw core::Error(where_ + ":pre_tokenizer", "step \"" + t + "\" is not supported", unsupported_fix());
    }
  }
  core::check(have_split && have_byte_level, where_ + ":pre_tokenizer", "is not Split(regex) + ByteLevel",
              unsupported_fix());

  // Post-processor: the tokens TemplateProcessing puts around a single sequence.
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    const json& post = j["post_processor"];
    std::vector<json> procs;
    if (post.value("type", "") == "Sequence" && post.contains("processors")) procs = post["processors"].get<std::vector<json>>();
    else procs.push_back(post);
    for (const json& p : procs) {
      const std::string t = p.value("type", "");
      if (t == "ByteLevel") continue;  // only adjusts offsets
      core::check(t == "TemplateProcessing", where_ + ":post_processor", "type \"" + t + "\" is not supported",
                  unsupported_fix());
      bool after_sequence = false;
      for (const json& item : p.value("single", json::array())) {
        if (item.contains("Sequence")) { after_sequence = true; continue; }
        if (!item.contains("SpecialToken")) continue;
        const std::string name = item["SpecialToken"].value("id", std::string());
        core::check(p.contains("special_tokens") && p["special_tokens"].contains(name), where_ + ":post_processor",
                    "template token \"" + name + "\" has no entry in special_tokens",
                    "restore tokenizer.json from the model's original folder");
        for (const json& id : p["special_tokens"][name].value("ids", json::array()))
          (after_sequence ? suffix_ids_ : prefix_ids_).push_back(token_id_from_json(id, where_ + ":post_processor"));
      }
    }
  }

  // Which tokens are BOS / EOS / PAD / UNK: tokenizer.json only implies BOS (the template) and UNK.
  auto id_of = [&](const std::string& s) { return s.empty() ? -1 : token_id(s); };
  bos_id_ = !prefix_ids_.empty() ? prefix_ids_.front() : id_of(names.bos_token);
  if (model.contains("unk_token") && model["unk_token"].is_string()) unk_id_ = id_of(model["unk_token"].get<std::string>());
  eos_id_ = id_of(names.eos_token);
  for (const char* guess : {"<|end_of_text|>", "<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>"})
    if (eos_id_ < 0) eos_id_ = id_of(guess);
  pad_id_ = !names.pad_token.empty() ? id_of(names.pad_token) : unk_id_;
}

int32_t BpeTokenizer::token_id(std::string_view piece) const {
  if (const AddedToken* t = added_.find_by_content(piece)) return t->id;
  std::string bytes;
  if (!byte_level_decode(piece, &bytes)) bytes = std::string(piece);
  auto it = id_by_bytes_.find(bytes);
  if (it != id_by_bytes_.end() && token_strings_[it->second] == piece) return it->second;
  return -1;
}

bool BpeTokenizer::is_special(int32_t id) const {
  const AddedToken* t = added_.find_by_id(id);
  return t && t->special;
}

std::string BpeTokenizer::token_text(int32_t id) const {
  if (const AddedToken* t = added_.find_by_id(id)) return t->content;
  core::check(id >= 0 && id < static_cast<int32_t>(token_strings_.size()), where_,
              "token id " + std::to_string(id) + " is out of range",
              "use ids below the vocabulary size " + std::to_string(vocab_size_));
  return token_strings_[id];
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
  if (const AddedToken* t = added_.find_by_id(id)) return t->content;
  core::check(id >= 0 && id < static_cast<int32_t>(token_raw_bytes_.size()), where_,
              "token id " + std::to_string(id) + " is out of range",
              "use ids below the vocabulary size " + std::to_string(vocab_size_));
  return token_raw_bytes_[id];
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_ || piece.size() == 1) {
    auto it = id_by_bytes_.find(std::string(piece));
    if (it != id_by_bytes_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  // Symbols form a linked list; candidate merges wait in a min-heap ordered by (rank, position), as in
  // HF tokenizers' Word::merge_all. Entries made stale by an earlier merge are skipped when popped,
  // so a word of n bytes costs O(n log n), not O(n^2).
  struct Symbol {
    int32_t id, prev, next;
    uint32_t len;
  };
  struct Candidate {
    int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  for (unsigned char b : piece) {
    const int32_t id = byte_token_[b] >= 0 ? byte_token_[b] : unk_id_;
    if (id < 0) continue;  // HF drops a byte the vocabulary lacks when there is no unk token
    const auto pos = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, pos - 1, pos + 1, 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::vector<Candidate> heap_storage;
  heap_storage.reserve(symbols.size());
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(std::greater<Candidate>(),
                                                                                       std::move(heap_storage));
  auto push_candidate = [&](int32_t pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    auto it = merges_.find(pair_key(symbols[pos].id, symbols[symbols[pos].next].id));
    if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.merged_id});
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push_candidate(pos);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;  // stale
    left.id = top.merged_id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    push_candidate(left.prev);
    push_candidate(top.pos);
  }
  for (int32_t pos = 0; pos >= 0; pos = symbols[pos].next) out.push_back(symbols[pos].id);
}

void BpeTokenizer::encode_plain_text(std::string_view text, std::vector<int32_t>& out) const {
  std::string normalized;
  if (nfc_) {
    normalized = nfc(text);
    text = normalized;
  }
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') {
    normalized = " " + std::string(text);
    text = normalized;
  }
  for (const TextPiece& p : pretokenize(text, pretokenizer_)) encode_piece(text.substr(p.begin, p.end - p.begin), out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos) ids = prefix_ids_;
  for (const TextSegment& seg : added_.split(text)) {
    if (seg.token_id >= 0) ids.push_back(seg.token_id);
    else encode_plain_text(seg.text, ids);
  }
  if (add_bos) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    out += token_bytes(id);
  }
  return make_valid_utf8(out);
}

std::string BpeTokenizer::describe() const {
  return "byte-level BPE " + where_ + " (" + std::to_string(vocab_size_) + " tokens, " +
         std::to_string(merges_.size()) + " merges, " +
         (pretokenizer_ == PretokenizerKind::Llama3 ? "Llama 3" : "Qwen2") + " pre-tokenizer" +
         (nfc_ ? ", NFC" : "") + ", bos " + std::to_string(bos_id_) + ", eos " + std::to_string(eos_id_) +
         ", pad " + std::to_string(pad_id_) + ")";
}

}  // namespace zerolora::tokenizer
