// Conversation data: FastChat/ShareGPT JSON (a list of {"id", "conversations": [{"from", "value"}]})
// and JSONL (one such object per line), detected from the first non-blank character.
//
// Roles: "human"/"user" and "gpt"/"assistant"; "system" as the first message sets the template's
// system prompt. As in FastChat's preprocess, a conversation whose first turn (after any system
// message) is from the assistant loses that message, and the rest must alternate user, assistant.
// Where FastChat crashes (KeyError, AssertionError) on a bad row we stop with one line naming the
// file, the row index, the id, the problem and the fix.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::data {

enum class Role { User, Assistant };

struct Message {
  Role role;
  std::string text;
};

struct Conversation {
  std::string id;    // the row's "id" ("" when absent)
  size_t row = 0;    // 0-based index of the row in its file
  bool has_system = false;
  std::string system;               // the row's own system prompt, when has_system
  std::vector<Message> messages;    // alternating User, Assistant, User, ... (starts with User)
  bool dropped_leading_assistant = false;
};

// Reads and validates a whole file. Throws core::Error on unreadable files, invalid JSON and
// malformed rows (no "conversations", unknown role, non-string value, broken alternation).
std::vector<Conversation> read_conversations(const std::string& path);
// The same on text already in memory; `path` is used in messages.
std::vector<Conversation> parse_conversations(std::string_view text, const std::string& path);

// "data.json row 12 (id \"identity_12\")", for messages about a row.
std::string row_location(const std::string& path, size_t row, const std::string& id);

}  // namespace zerolora::data
