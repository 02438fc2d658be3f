// chat: an interactive conversation with a base model plus an adapter, rendered with the conversation
// template the adapter was trained with, streamed token by token, the whole history kept in the KV cache's
// prompt. Reads one user message per line from stdin ("/reset" forgets the history, EOF or "/exit" ends).
#include <CLI/CLI.hpp>

#include <iostream>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/text_streamer.h"
#include "core/error.h"
#include "core/runtime.h"
#include "data/templates.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

int cmd_chat(int argc, char** argv) {
  CLI::App app{"Chat with a model (and a LoRA adapter) using a conversation template"};
  std::string model_dir, adapter_dir, conv_template = "vicuna_v1.1", system;
  int64_t max_new_tokens = 256;
  double temperature = 0.7, top_p = 1.0;
  uint64_t seed = 0;
  bool bf16 = false;
  int threads = 0;
  app.add_option("model_dir", model_dir, "base model folder")->required();
  app.add_option("--adapter", adapter_dir, "PEFT adapter folder (zerolora train output)");
  app.add_option("--conv_template", conv_template, "vicuna_v1.1 | llama-2 | llama-3 | chatml | mistral")->capture_default_str();
  app.add_option("--system", system, "system prompt (default: the template's)");
  app.add_option("--max_new_tokens", max_new_tokens, "per reply")->capture_default_str();
  app.add_option("--temperature", temperature, "0 = greedy (FastChat's CLI uses 0.7)")->capture_default_str();
  app.add_option("--top_p", top_p, "nucleus sampling")->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_flag("--bf16", bf16, "bf16 frozen weights");
  app.add_option("--num_threads", threads, "threads (0 = all cores)");
  ZL_PARSE(app, argc, argv);
  core::set_num_threads(threads);
  const data::TemplateStyle style = data::find_template(conv_template);
  auto tok = tokenizer::load_tokenizer(model_dir);
  auto weights = model::load_llama_weights(model_dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data());
  model::GenerationOptions go;
  go.max_new_tokens = max_new_tokens;
  go.sampling.temperature = temperature;
  go.sampling.top_p = top_p;
  go.sampling.seed = seed;
  go.stop_ids = model::model_stop_ids(model_dir, weights.config);
  for (const char* stop : {"<|im_end|>", "<|eot_id|>", "</s>"})
    if (tok->token_id(stop) >= 0) go.stop_ids.push_back(tok->token_id(stop));

  const bool interactive = isatty(fileno(stdin));
  data::Conversation conv;
  if (!system.empty()) conv.has_system = true, conv.system = system;
  std::string line;
  while (true) {
    if (interactive) std::printf("USER: "), std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      conv.messages.clear();
      continue;
    }
    if (line.empty()) continue;
    conv.messages.push_back({data::Role::User, line});
    conv.messages.push_back({data::Role::Assistant, ""});  // renders as the generation prompt
    const auto prompt = tok->encode(data::render_prompt(style, conv), !data::template_renders_bos(style));
    std::printf("ASSISTANT: ");
    TextStreamer streamer(*tok);
    std::vector<int32_t> reply;
    go.sampling.seed = seed + conv.messages.size();
    model::generate(decoder, prompt, go, [&](int32_t id) {
      if (std::find(go.stop_ids.begin(), go.stop_ids.end(), id) != go.stop_ids.end()) return true;
      reply.push_back(id);
      streamer.push(id);
      streamer.flush(false);
      return true;
    });
    streamer.flush(true);
    std::printf("\n");
    conv.messages.back().text = tok->decode(reply, true);
  }
  return 0;
}

}  // namespace zerolora::cli
