#include "data/templates.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace zerolora::data {

namespace {

const char* const kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";
const char* const kChatMLSystem = "You are a helpful assistant.";

struct PieceWriter {
  std::vector<TemplatePiece> pieces;
  void add(const std::string& text, bool trained = false) {
    if (text.empty()) return;
    if (!pieces.empty() && pieces.back().trained == trained) pieces.back().text += text;
    else pieces.push_back({text, trained});
  }
};

std::string system_of(TemplateStyle style, const Conversation& conv) {
  return conv.has_system ? conv.system : default_system_message(style);
}

// FastChat SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 "</s>", roles USER/ASSISTANT.
void render_vicuna(const Conversation& conv, PieceWriter& w) {
  w.add(system_of(TemplateStyle::VicunaV11, conv) + " ");
  for (size_t k = 0; k < conv.messages.size(); ++k) {
    const Message& m = conv.messages[k];
    const bool user = m.role == Role::User;
    const std::string role = user ? "USER" : "ASSISTANT";
    if (m.text.empty()) {
      w.add(role + ":");
    } else if (user) {
      w.add(role + ": " + m.text + " ");
    } else {
      w.add(role + ":");
      w.add(" " + m.text + "</s>", true);
    }
  }
}

// FastChat SeparatorStyle.LLAMA2: llama-2 (sep2 " </s><s>") and mistral (sep2 "</s>").
void render_llama2_style(TemplateStyle style, const Conversation& conv, PieceWriter& w) {
  const std::string system = system_of(style, conv);
  if (!system.empty()) {
    w.add(style == TemplateStyle::Llama2 ? "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" : "[INST] " + system + "\n");
  } else {
    w.add("[INST] ");
  }
  for (size_t k = 0; k < conv.messages.size(); ++k) {
    const Message& m = conv.messages[k];
    const bool user = m.role == Role::User;
    const std::string tag = user ? "[INST]" : "[/INST]";
    if (m.text.empty()) {
      w.add(tag);
    } else if (k == 0) {
      w.add(m.text + " ");
    } else if (user) {
      w.add(tag + " " + m.text + " ");
    } else if (style == TemplateStyle::Llama2) {
      w.add(tag);
      w.add(" " + m.text + " </s>", true);
      w.add("<s>");
    } else {
      w.add(tag);
      w.add(" " + m.text + "</s>", true);
    }
  }
}

// FastChat SeparatorStyle.LLAMA3.
void render_llama3(const Conversation& conv, PieceWriter& w) {
  w.add("<|begin_of_text|>");
  const std::string system = system_of(TemplateStyle::Llama3, conv);
  if (!system.empty()) w.add("<|start_header_id|>system<|end_header_id|>\n\n" + system + "<|eot_id|>");
  for (const Message& m : conv.messages) {
    const bool user = m.role == Role::User;
    w.add(std::string("<|start_header_id|>") + (user ? "user" : "assistant") + "<|end_header_id|>\n\n");
    if (m.text.empty()) continue;
    w.add(python_strip(m.text) + "<|eot_id|>", !user);
  }
}

// FastChat SeparatorStyle.CHATML as qwen-7b-chat configures it (sep "<|im_end|>").
void render_chatml(const Conversation& conv, PieceWriter& w) {
  // system_template "<|im_start|>system\n{system_message}" is never empty, so the block is always written
  w.add("<|im_start|>system\n" + system_of(TemplateStyle::ChatML, conv) + "<|im_end|>\n");
  for (const Message& m : conv.messages) {
    const bool user = m.role == Role::User;
    const std::string role = user ? "<|im_start|>user" : "<|im_start|>assistant";
    if (m.text.empty()) {
      w.add(role + "\n");
    } else {
      w.add(role + "\n");
      w.add(m.text + "<|im_end|>", !user);
      w.add("\n");
    }
  }
}

bool is_python_space(char32_t cp) { return tokenizer::is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

}  // namespace

TemplateStyle find_template(const std::string& name) {
  if (name == "vicuna_v1.1" || name == "vicuna") return TemplateStyle::VicunaV11;
  if (name == "llama-2") return TemplateStyle::Llama2;
  if (name == "mistral") return TemplateStyle::Mistral;
  if (name == "llama-3") return TemplateStyle::Llama3;
  if (name == "chatml" || name == "qwen-7b-chat") return TemplateStyle::ChatML;
  std::string known;
  for (const auto& n : template_names()) known += (known.empty() ? "" : ", ") + n;
  throw core::Error("--conv_template", "unknown template \"" + name + "\"", "use one of: " + known);
}

const char* template_name(TemplateStyle style) {
  switch (style) {
    case TemplateStyle::VicunaV11: return "vicuna_v1.1";
    case TemplateStyle::Llama2: return "llama-2";
    case TemplateStyle::Mistral: return "mistral";
    case TemplateStyle::Llama3: return "llama-3";
    case TemplateStyle::ChatML: return "chatml";
  }
  return "?";
}

std::vector<std::string> template_names() { return {"vicuna_v1.1", "llama-2", "llama-3", "chatml", "mistral"}; }

std::string default_system_message(TemplateStyle style) {
  switch (style) {
    case TemplateStyle::VicunaV11: return kVicunaSystem;
    case TemplateStyle::ChatML: return kChatMLSystem;
    default: return "";
  }
}

bool template_renders_bos(TemplateStyle style) { return style == TemplateStyle::Llama3; }

std::vector<TemplatePiece> render_pieces(TemplateStyle style, const Conversation& conv) {
  PieceWriter w;
  switch (style) {
    case TemplateStyle::VicunaV11: render_vicuna(conv, w); break;
    case TemplateStyle::Llama2:
    case TemplateStyle::Mistral: render_llama2_style(style, conv, w); break;
    case TemplateStyle::Llama3: render_llama3(conv, w); break;
    case TemplateStyle::ChatML: render_chatml(conv, w); break;
  }
  return std::move(w.pieces);
}

std::string join_pieces(const std::vector<TemplatePiece>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += p.text;
  return out;
}

std::string render_prompt(TemplateStyle style, const Conversation& conv) {
  return join_pieces(render_pieces(style, conv));
}

std::string python_strip(const std::string& text) {
  const auto cps = tokenizer::decode_utf8(text);
  size_t first = 0, last = cps.size();
  while (first < last && is_python_space(cps[first].cp)) ++first;
  while (last > first && is_python_space(cps[last - 1].cp)) --last;
  if (first == last) return "";
  const size_t begin = cps[first].byte_offset;
  const size_t end = last < cps.size() ? cps[last].byte_offset : text.size();
  return text.substr(begin, end - begin);
}

}  // namespace zerolora::data
