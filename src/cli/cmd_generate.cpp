// generate: continue a prompt with a model folder (optionally with a LoRA adapter), streaming the text.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "cli/text_streamer.h"
#include "core/error.h"
#include "core/runtime.h"
#include "kernels/context.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

int cmd_generate(int argc, char** argv) {
  std::string dir, adapter_dir, ids_text, prompt, stop_text;
  model::GenerationOptions options;
  bool bf16 = false, ignore_eos = false;
  int64_t threads = 0;
  train::FlagSet fs("zerolora generate",
                    "usage: zerolora generate --model_name_or_path DIR (--ids IDS | --prompt TEXT) [--adapter DIR] "
                    "[flags]\n"
                    "Generate a continuation with a KV cache (greedy by default; sampling with --temperature).");
  fs.add(train::model_name_or_path_flag(dir).with_help(
      "model folder (config.json + safetensors; tokenizer files for --prompt)"));
  fs.accept_positional_as("model_name_or_path");
  fs.add(train::adapter_flag(adapter_dir));
  fs.add(train::string_flag("ids", ids_text, "IDS", "prompt as comma-separated token ids, e.g. 1,403,407"));
  fs.add(train::string_flag("prompt", prompt, "TEXT", "prompt text (tokenized with the model's tokenizer, BOS added)"));
  fs.add(train::int_flag("max_new_tokens", options.max_new_tokens, "tokens to generate at most"));
  fs.add(train::float_flag("temperature", options.sampling.temperature, "0 = greedy; > 0 samples"));
  fs.add(train::float_flag("top_p", options.sampling.top_p, "nucleus sampling mass (1 = off)"));
  fs.add(train::int_flag("top_k", options.sampling.top_k, "sample among the k most likely tokens (0 = off)"));
  fs.add(train::seed_flag(options.sampling.seed).with_help("random seed for sampling"));
  fs.add(train::string_flag("stop_ids", stop_text, "IDS", "extra comma-separated token ids that end generation"));
  fs.add(train::bool_flag("ignore_eos", ignore_eos, "do not stop at the model's EOS ids"));
  fs.add(train::bf16_flag(bf16).with_help("store frozen weights in bf16 (compute in fp32)"));
  add_threads_flag(fs, threads);
  std::string device = "auto";
  add_device_flag(fs, device, "generation");
  if (!parse_flags(fs, argc, argv)) return 0;
  if (fs.given("ids") && fs.given("prompt"))
    throw train::FlagError("--ids/--prompt", "both are given", "pass either --ids 1,2,3 or --prompt TEXT");
  if (ids_text.empty() && prompt.empty())
    throw train::FlagError("zerolora generate", "no prompt", "give --ids 1,2,3 or --prompt TEXT");
  core::set_num_threads(int(threads));
  std::string device_line;
  const std::unique_ptr<kernels::CudaContext> gpu = model::open_generation_device(device, &device_line);
  if (gpu) std::fprintf(stderr, "device: %s\n", device_line.c_str());

  auto weights = model::load_llama_weights(dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::vector<int32_t> ids;
  if (!prompt.empty()) {
    tok = tokenizer::load_tokenizer(dir);
    ids = tok->encode(prompt, true);
  } else {
    ids = parse_token_ids(ids_text, "--ids");
  }
  if (!ignore_eos) {
    options.stop_ids = model::model_stop_ids(dir, weights.config);
    if (tok && tok->eos_id() >= 0 &&
        std::find(options.stop_ids.begin(), options.stop_ids.end(), tok->eos_id()) == options.stop_ids.end())
      options.stop_ids.push_back(tok->eos_id());
  }
  if (!stop_text.empty())
    for (int32_t id : parse_token_ids(stop_text, "--stop_ids")) options.stop_ids.push_back(id);

  const model::LoadedAdapter adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data(),
                                       gpu ? gpu->ctx() : kernels::host());

  model::GenerationResult result;
  if (tok) {
    TextStreamer streamer(*tok);
    for (int32_t id : ids) streamer.push(id);
    streamer.flush(false);  // the prompt, before the prefill's wait
    result = model::generate<float>(decoder, ids, options, [&](int32_t id) {
      streamer.push(id);
      streamer.flush(false);
      return true;
    });
    streamer.flush(true);
    std::printf("\n");
  } else {
    bool first = true;
    result = model::generate<float>(decoder, ids, options, [&](int32_t id) {
      std::printf(first ? "%d" : ",%d", id);
      std::fflush(stdout);
      first = false;
      return true;
    });
    std::printf("\n");
  }
  const double n_new = double(result.tokens.size());
  std::fprintf(stderr, "prompt %zu tokens in %.1f ms (%.1f tokens/s); generated %zu tokens in %.1f ms (%.1f tokens/s); "
               "stopped: %s\n",
               ids.size(), result.prefill_seconds * 1e3, double(ids.size()) / std::max(result.prefill_seconds, 1e-9),
               result.tokens.size(), result.decode_seconds * 1e3,
               n_new > 1 ? (n_new - 1) / std::max(result.decode_seconds, 1e-9) : 0.0, result.stop_reason.c_str());
  return 0;
}

}  // namespace zerolora::cli
