#include "data/conversation.h"

#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace zerolora::data {

namespace {

using nlohmann::json;

const char* const kRowShape =
    "each row must be {\"id\": ..., \"conversations\": [{\"from\": \"human\", \"value\": \"...\"}, "
    "{\"from\": \"gpt\", \"value\": \"...\"}, ...]}";

std::string id_of(const json& row) {
  if (!row.is_object() || !row.contains("id")) return "";
  const json& id = row["id"];
  if (id.is_string()) return id.get<std::string>();
  if (id.is_number()) return id.dump();
  return "";
}

enum class ParsedRole { User, Assistant, System };

ParsedRole parse_role(const std::string& from, const std::string& where, size_t message_index) {
  if (from == "human" || from == "user") return ParsedRole::User;
  if (from == "gpt" || from == "assistant") return ParsedRole::Assistant;
  if (from == "system") return ParsedRole::System;
  throw core::Error(where, "message " + std::to_string(message_index) + " has unknown role \"from\": \"" + from + "\"",
                    "use \"human\" (or \"user\"), \"gpt\" (or \"assistant\"), or \"system\" as the first message");
}

Conversation parse_row(const json& row, size_t index, const std::string& path) {
  Conversation conv;
  conv.row = index;
  conv.id = id_of(row);
  const std::string where = row_location(path, index, conv.id);
  core::check(row.is_object(), where, "is not a JSON object", kRowShape);
  core::check(row.contains("conversations"), where, "has no \"conversations\" list", kRowShape);
  const json& messages = row["conversations"];
  core::check(messages.is_array(), where, "\"conversations\" is not a list", kRowShape);

  std::vector<std::pair<ParsedRole, std::string>> parsed;
  for (size_t m = 0; m < messages.size(); ++m) {
    const json& msg = messages[m];
    core::check(msg.is_object() && msg.contains("from") && msg.contains("value"), where,
                "message " + std::to_string(m) + " is not an object with \"from\" and \"value\"", kRowShape);
    core::check(msg["from"].is_string(), where, "message " + std::to_string(m) + " has a non-string \"from\"",
                kRowShape);
    core::check(msg["value"].is_string(), where,
                "message " + std::to_string(m) + " has a " + std::string(msg["value"].type_name()) +
                    " \"value\", not a string",
                "make every \"value\" a string (use \"\" for an empty message)");
    const ParsedRole role = parse_role(msg["from"].get<std::string>(), where, m);
    core::check(role != ParsedRole::System || m == 0, where,
                "message " + std::to_string(m) + " is a \"system\" message after the start",
                "put the system message first, or remove it");
    parsed.emplace_back(role, msg["value"].get<std::string>());
  }

  size_t first = 0;
  if (!parsed.empty() && parsed[0].first == ParsedRole::System) {
    conv.has_system = true;
    conv.system = parsed[0].second;
    first = 1;
  }
  // FastChat preprocess: `if roles[source[0]["from"]] != conv.roles[0]: source = source[1:]`
  if (first < parsed.size() && parsed[first].first == ParsedRole::Assistant) {
    conv.dropped_leading_assistant = true;
    ++first;
  }
  for (size_t m = first; m < parsed.size(); ++m) {
    const bool expect_user = (m - first) % 2 == 0;
    const ParsedRole expected = expect_user ? ParsedRole::User : ParsedRole::Assistant;
    core::check(parsed[m].first == expected, where,
                "message " + std::to_string(m) + " should be from " + (expect_user ? "\"human\"" : "\"gpt\"") +
                    ": roles must alternate human, gpt, human, ...",
                "fix the roles of this row or remove it");
    conv.messages.push_back({expect_user ? Role::User : Role::Assistant, std::move(parsed[m].second)});
  }
  return conv;
}

std::string json_error_fix() {
  return "the file must be a JSON array of conversation rows, or JSONL with one row per line";
}

}  // namespace

std::string row_location(const std::string& path, size_t row, const std::string& id) {
  std::string s = path + " row " + std::to_string(row);
  if (!id.empty()) s += " (id \"" + id + "\")";
  return s;
}

std::vector<Conversation> parse_conversations(std::string_view text, const std::string& path) {
  size_t start = 0;
  while (start < text.size() && std::isspace(static_cast<unsigned char>(text[start]))) ++start;
  if (start + 3 <= text.size() && text.substr(start, 3) == "\xEF\xBB\xBF") start += 3;  // UTF-8 BOM
  core::check(start < text.size(), path, "is empty", json_error_fix());

  std::vector<Conversation> rows;
  if (text[start] == '[') {
    json all;
    try {
      all = json::parse(text.substr(start));
    } catch (const json::exception& e) {
      throw core::Error(path, std::string("is not valid JSON (") + e.what() + ")", json_error_fix());
    }
    rows.reserve(all.size());
    for (size_t i = 0; i < all.size(); ++i) rows.push_back(parse_row(all[i], i, path));
    return rows;
  }
  core::check(text[start] == '{', path, "starts with neither '[' (JSON) nor '{' (JSONL)", json_error_fix());

  // JSONL: one object per non-blank line; the row index counts rows, the message also names the line.
  size_t line_number = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    ++line_number;
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& e) {
      throw core::Error(path + " line " + std::to_string(line_number) + " (row " + std::to_string(rows.size()) + ")",
                        std::string("is not valid JSON (") + e.what() + ")",
                        "JSONL needs one complete JSON object per line");
    }
    rows.push_back(parse_row(row, rows.size(), path));
  }
  return rows;
}

std::vector<Conversation> read_conversations(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  core::check(static_cast<bool>(in), path, "cannot be read", "check --data_path / --eval_data_path");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_conversations(ss.str(), path);
}

}  // namespace zerolora::data
