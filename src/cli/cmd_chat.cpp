// chat: an interactive conversation with a base model plus an adapter, rendered with the conversation
// template the adapter was trained with, streamed token by token, the whole history kept in the KV cache's
// prompt. Reads one user message per line from stdin ("/reset" forgets the history, EOF or "/exit" ends).
#include <iostream>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/text_streamer.h"
#include "core/error.h"
#include "core/runtime.h"
#include "kernels/context.h"
#include "data/templates.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

int cmd_chat(int argc, char** argv) {
  std::string model_dir, adapter_dir, conv_template = "vicuna_v1.1", system;
  int64_t max_new_tokens = 256;
  double temperature = 0.7, top_p = 1.0;
  uint64_t seed = 0;
  bool bf16 = false;
  int64_t threads = 0;
  train::FlagSet fs("zerolora chat",
                    "usage: zerolora chat --model_name_or_path DIR [--adapter DIR] [--conv_template NAME] [flags]\n"
                    "Chat with a model (and a LoRA adapter) in a conversation template: one user message per stdin "
                    "line;\n/reset forgets the history, /exit or end of input ends.");
  fs.add(train::model_name_or_path_flag(model_dir).with_help("base model folder"));
  fs.accept_positional_as("model_name_or_path");
  fs.add(train::adapter_flag(adapter_dir));
  fs.add(train::conv_template_flag(conv_template));
  fs.add(train::string_flag("system", system, "TEXT", "system prompt (default: the template's)"));
  fs.add(train::int_flag("max_new_tokens", max_new_tokens, "per reply"));
  fs.add(train::float_flag("temperature", temperature, "0 = greedy (FastChat's CLI uses 0.7)"));
  fs.add(train::float_flag("top_p", top_p, "nucleus sampling"));
  fs.add(train::seed_flag(seed).with_help("sampling seed"));
  fs.add(train::bf16_flag(bf16).with_help("bf16 frozen weights"));
  add_threads_flag(fs, threads);
  std::string device = "auto";
  add_device_flag(fs, device, "generation");
  if (!parse_flags(fs, argc, argv)) return 0;
  core::set_num_threads(int(threads));
  std::string device_line;
  const std::unique_ptr<kernels::CudaContext> gpu = model::open_generation_device(device, &device_line);
  if (gpu) std::fprintf(stderr, "device: %s\n", device_line.c_str());
  const data::TemplateStyle style = data::find_template(conv_template);
  auto tok = tokenizer::load_tokenizer(model_dir);
  auto weights = model::load_llama_weights(model_dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data(),
                                       gpu ? gpu->ctx() : kernels::host());
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
