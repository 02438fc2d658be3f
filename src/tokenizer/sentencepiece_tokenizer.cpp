#include "tokenizer/sentencepiece_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file.h"
#include "tokenizer/sentencepiece_model_proto.h"
#include "tokenizer/unicode.h"

namespace zerolora::tokenizer {

namespace {

const char* const kUnderline = "\xE2\x96\x81";  // "▁", SentencePiece's whitespace mark

using core::read_whole_file;

// A token in tokenizer_config.json is a string, an {"content": ...} object (AddedToken) or null.
bool token_string(const nlohmann::json& j, std::string* out) {
  if (j.is_string()) { *out = j.get<std::string>(); return true; }
  if (j.is_object() && j.contains("content") && j["content"].is_string()) {
    *out = j["content"].get<std::string>();
    return true;
  }
  return false;
}

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(text.substr(pos));
  return out;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

}  // namespace

SentencePieceConfig read_sentencepiece_config(const std::string& path) {
  SentencePieceConfig config;
  if (!std::filesystem::exists(path)) return config;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_whole_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw core::Error(path, std::string("is not valid JSON (") + e.what() + ")",
                      "restore the file from the model's original folder");
  }
  core::check(j.is_object(), path, "is not a JSON object", "restore the file from the model's original folder");
  if (j.contains("legacy") && j["legacy"].is_boolean()) config.legacy = j["legacy"].get<bool>();
  if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) config.add_bos_token = j["add_bos_token"].get<bool>();
  if (j.contains("add_eos_token") && j["add_eos_token"].is_boolean()) config.add_eos_token = j["add_eos_token"].get<bool>();
  if (j.contains("bos_token")) token_string(j["bos_token"], &config.bos_token);
  if (j.contains("eos_token")) token_string(j["eos_token"], &config.eos_token);
  if (j.contains("unk_token")) token_string(j["unk_token"], &config.unk_token);
  if (j.contains("pad_token")) token_string(j["pad_token"], &config.pad_token);
  if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
    for (const auto& [key, value] : j["added_tokens_decoder"].items()) {
      AddedToken t;
      if (!token_string(value, &t.content)) continue;
      try {
        t.id = std::stoi(key);
      } catch (const std::exception&) {
        throw core::Error(path + ":added_tokens_decoder", "key \"" + key + "\" is not a token id",
                          "restore the file from the model's original folder");
      }
      t.special = value.value("special", true);
      t.lstrip = value.value("lstrip", false);
      t.rstrip = value.value("rstrip", false);
      t.single_word = value.value("single_word", false);
      config.added_tokens.push_back(t);
    }
  }
  if (j.contains("additional_special_tokens") && j["additional_special_tokens"].is_array()) {
    for (const auto& item : j["additional_special_tokens"]) {
      AddedToken t;
      if (token_string(item, &t.content)) config.added_tokens.push_back(t);
    }
  }
  return config;
}

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_bytes, SentencePieceConfig config,
                                               const std::string& where)
    : where_(where), config_(std::move(config)) {
  const auto status = sp_.LoadFromSerializedProto(model_bytes);
  core::check(status.ok(), where_, "is not a SentencePiece model (" + status.ToString() + ")",
              "point --model_name_or_path at a folder whose tokenizer.model is a SentencePiece model");
  const auto status2 = sp_no_prefix_.LoadFromSerializedProto(sentencepiece_model_without_dummy_prefix(model_bytes, where_));
  core::check(status2.ok(), where_, "could not be loaded without its dummy prefix (" + status2.ToString() + ")");

  vocab_size_ = sp_.GetPieceSize();
  bos_id_ = id_of_token_string(config_.bos_token);
  eos_id_ = id_of_token_string(config_.eos_token);
  unk_id_ = id_of_token_string(config_.unk_token);
  pad_id_ = config_.pad_token.empty() ? unk_id_ : id_of_token_string(config_.pad_token);
  underline_id_ = id_of_token_string(kUnderline);

  // Special tokens recognised in text: bos/eos/unk/pad, then those of tokenizer_config.json.
  std::vector<AddedToken> specials;
  auto add = [&](const AddedToken& t) {
    for (const auto& s : specials)
      if (s.content == t.content) return;
    specials.push_back(t);
  };
  for (const std::string* s : {&config_.bos_token, &config_.eos_token, &config_.unk_token, &config_.pad_token}) {
    if (s->empty()) continue;
    const int32_t id = id_of_token_string(*s);
    if (id >= 0) add(AddedToken{*s, id});
  }
  for (AddedToken t : config_.added_tokens) {
    if (t.id < 0) t.id = id_of_token_string(t.content);
    if (t.id < 0) t.id = vocab_size_;  // a new token after the vocabulary, as HF's add_tokens does
    vocab_size_ = std::max(vocab_size_, t.id + 1);
    add(t);
  }
  specials_ = SpecialTokenMatcher(std::move(specials));

  std::vector<int> unk_pieces;
  sp_no_prefix_.Encode(config_.unk_token, &unk_pieces).IgnoreError();
  unk_token_length_ = unk_pieces.size();
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_folder(const std::string& model_dir) {
  const auto model_path = (std::filesystem::path(model_dir) / "tokenizer.model").string();
  const auto config_path = (std::filesystem::path(model_dir) / "tokenizer_config.json").string();
  return std::make_unique<SentencePieceTokenizer>(read_whole_file(model_path), read_sentencepiece_config(config_path),
                                                  model_path);
}

int32_t SentencePieceTokenizer::id_of_token_string(const std::string& token) const {
  if (token.empty()) return -1;
  for (const auto& t : config_.added_tokens)
    if (t.content == token && t.id >= 0) return t.id;
  const int id = sp_.PieceToId(token);
  return sp_.IdToPiece(id) == token ? id : -1;
}

int32_t SentencePieceTokenizer::token_id(std::string_view piece) const {
  if (const AddedToken* t = specials_.find_by_content(piece)) return t->id;
  return id_of_token_string(std::string(piece));
}

void SentencePieceTokenizer::encode_chunk_legacy(std::string_view chunk, std::vector<int32_t>& out) const {
  std::vector<int> ids;
  sp_.Encode(chunk, &ids).IgnoreError();
  out.insert(out.end(), ids.begin(), ids.end());
}

void SentencePieceTokenizer::encode_chunk_non_legacy(std::string_view chunk, std::vector<int32_t>& out) const {
  std::vector<int> ids;
  // transformers LlamaTokenizer._tokenize: a chunk that starts with a space is encoded after the unk
  // token's text, whose pieces are then dropped, so that SentencePiece keeps the space as "▁".
  if (starts_with(chunk, kUnderline) || starts_with(chunk, " ")) {
    std::string prefixed = config_.unk_token;
    prefixed.append(chunk);
    sp_no_prefix_.Encode(prefixed, &ids).IgnoreError();
    const size_t drop = ids.size() >= unk_token_length_ ? unk_token_length_ : 0;
    out.insert(out.end(), ids.begin() + static_cast<long>(drop), ids.end());
  } else {
    sp_no_prefix_.Encode(chunk, &ids).IgnoreError();
    out.insert(out.end(), ids.begin(), ids.end());
  }
}

std::vector<int32_t> SentencePieceTokenizer::encode_text(std::string_view text) const {
  std::vector<int32_t> out;
  if (text.empty()) return out;
  if (config_.legacy) {
    for (const TextSegment& seg : specials_.split(text)) {
      if (seg.token_id >= 0) out.push_back(seg.token_id);
      else encode_chunk_legacy(seg.text, out);
    }
    return out;
  }
  // transformers LlamaTokenizer.tokenize (non-legacy): "▁" + text with its own "▁" turned into spaces,
  // then special tokens split out; a lone leading "▁" before a special token is dropped.
  const std::string marked = kUnderline + replace_all(text, kUnderline, " ");
  const std::vector<TextSegment> segments = specials_.split(marked);
  for (const TextSegment& seg : segments) {
    if (seg.token_id >= 0) out.push_back(seg.token_id);
    else encode_chunk_non_legacy(seg.text, out);
  }
  if (out.size() > 1 && out[0] == underline_id_ && underline_id_ >= 0 && segments.size() > 1 &&
      segments[0].token_id < 0 && segments[1].token_id >= 0 && is_special(out[1]))
    out.erase(out.begin());
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && config_.add_bos_token && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::vector<int32_t> body = encode_text(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (add_bos && config_.add_eos_token && eos_id_ >= 0) ids.push_back(eos_id_);
  return ids;
}

bool SentencePieceTokenizer::is_special(int32_t id) const {
  if (const AddedToken* t = specials_.find_by_id(id)) return t->special;
  if (id < 0 || id >= sp_.GetPieceSize()) return false;
  return sp_.IsControl(id) || sp_.IsUnknown(id);
}

std::string SentencePieceTokenizer::token_text(int32_t id) const {
  if (const AddedToken* t = specials_.find_by_id(id)) return t->content;
  core::check(id >= 0 && id < sp_.GetPieceSize(), where_, "token id " + std::to_string(id) + " is out of range",
              "use ids below the vocabulary size " + std::to_string(vocab_size_));
  return sp_.IdToPiece(id);
}

std::string SentencePieceTokenizer::token_bytes(int32_t id) const {
  if (const AddedToken* t = specials_.find_by_id(id)) return t->content;
  const std::string piece = token_text(id);
  if (sp_.IsByte(id) && piece.size() == 6) {  // "<0x0A>"
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  }
  if (sp_.IsControl(id)) return "";
  return replace_all(piece, kUnderline, " ");
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  // Text runs between special tokens are concatenated piece bytes. The space that encoding added in
  // front of a run (the dummy prefix: every run in legacy mode, the first run in non-legacy mode)
  // is removed again, so decode(encode(text)) == text.
  std::string out;
  std::string run;
  bool at_text_start = true;  // nothing but BOS so far
  auto flush = [&] {
    if (run.empty()) return;
    if ((config_.legacy || at_text_start) && run[0] == ' ') run.erase(0, 1);
    out += run;
    run.clear();
    at_text_start = false;
  };
  for (int32_t id : ids) {
    if (is_special(id)) {
      flush();
      if (id != bos_id_) at_text_start = false;
      if (!skip_special) out += token_text(id);
      continue;
    }
    run += token_bytes(id);
  }
  flush();
  return make_valid_utf8(out);
}

std::string SentencePieceTokenizer::describe() const {
  return "SentencePiece " + where_ + " (" + std::to_string(vocab_size_) + " tokens, bos " + std::to_string(bos_id_) +
         ", eos " + std::to_string(eos_id_) + ", unk " + std::to_string(unk_id_) + ", pad " + std::to_string(pad_id_) +
         ", legacy " + (config_.legacy ? "true" : "false") + ")";
}

}  // namespace zerolora::tokenizer
