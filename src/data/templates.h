// Conversation templates (FastChat conversation.py, fastchat-spec §3), rendered as consecutive pieces
// of text so that the trained parts (each assistant message and its end marker) are known exactly.
//
//   vicuna_v1.1  SYS USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>
//   llama-2      [INST] <<SYS>>\nSYS\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s><s>
//   mistral      [INST] SYS\nq [/INST] a</s>[INST] q2 [/INST] a2</s>
//   llama-3      <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>
//                <|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant...
//   chatml       <|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n
//                (FastChat's qwen-7b-chat; that name is accepted too)
// Trained: vicuna " a</s>", llama-2 " a </s>", mistral " a</s>", llama-3 "a<|eot_id|>", chatml "a<|im_end|>".
// An empty message renders as FastChat renders it (the role tag alone) and trains nothing.
#pragma once
#include <string>
#include <vector>

#include "data/conversation.h"

namespace zerolora::data {

enum class TemplateStyle { VicunaV11, Llama2, Mistral, Llama3, ChatML };

struct TemplatePiece {
  std::string text;
  bool trained = false;
};

// The style for a --conv_template name; throws core::Error listing the known names.
TemplateStyle find_template(const std::string& name);
const char* template_name(TemplateStyle style);
std::vector<std::string> template_names();

// The template's default system prompt ("" = none).
std::string default_system_message(TemplateStyle style);
// Whether the rendered text itself starts with the BOS token (llama-3), so the tokenizer must not add one.
bool template_renders_bos(TemplateStyle style);

std::vector<TemplatePiece> render_pieces(TemplateStyle style, const Conversation& conv);
std::string render_prompt(TemplateStyle style, const Conversation& conv);
std::string join_pieces(const std::vector<TemplatePiece>& pieces);

// Python's str.strip() (Unicode whitespace), which FastChat's llama-3 template applies to messages.
std::string python_strip(const std::string& text);

}  // namespace zerolora::data
