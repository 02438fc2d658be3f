// generate: continue a prompt with a model folder (optionally with a LoRA adapter), streaming the text.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "cli/text_streamer.h"
#include "core/error.h"
#include "core/runtime.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "model/lora.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

namespace {

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string tok = text.substr(pos, end - pos);
    try {
      size_t used = 0;
      const long v = std::stol(tok, &used);
      if (used != tok.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(tok);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      throw core::Error(flag, "'" + tok + "' is not a token id", "give comma-separated token ids, e.g. 1,2,3");
    }
    pos = end + 1;
  }
  return ids;
}


}  // namespace

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate a continuation with a KV cache (greedy by default; sampling with --temperature)"};
  std::string dir, adapter_dir, ids_text, prompt, stop_text;
  model::GenerationOptions options;
  bool bf16 = false, ignore_eos = false;
  int threads = 0;
  app.add_option("model_dir", dir, "model folder (config.json + safetensors, tokenizer files for --prompt)")
      ->required();
  app.add_option("--adapter", adapter_dir, "PEFT LoRA adapter folder to apply (unmerged)");
  auto* ids_opt = app.add_option("--ids", ids_text, "prompt as comma-separated token ids, e.g. 1,403,407");
  auto* prompt_opt = app.add_option("--prompt", prompt, "prompt text (tokenized with the model's tokenizer, BOS added)");
  ids_opt->excludes(prompt_opt);
  app.add_option("--max_new_tokens", options.max_new_tokens, "tokens to generate at most")->capture_default_str();
  app.add_option("--temperature", options.sampling.temperature, "0 = greedy; > 0 samples")->capture_default_str();
  app.add_option("--top_p", options.sampling.top_p, "nucleus sampling mass (1 = off)")->capture_default_str();
  app.add_option("--top_k", options.sampling.top_k, "sample among the k most likely tokens (0 = off)")
      ->capture_default_str();
  app.add_option("--seed", options.sampling.seed, "random seed for sampling")->capture_default_str();
  app.add_option("--stop_ids", stop_text, "extra comma-separated token ids that end generation");
  app.add_flag("--ignore_eos", ignore_eos, "do not stop at the model's EOS ids");
  app.add_flag("--bf16", bf16, "store frozen weights in bf16 (compute in fp32)");
  app.add_option("--num_threads", threads, "threads (0 = all cores)");
  ZL_PARSE(app, argc, argv);
  core::check(!ids_text.empty() || !prompt.empty(), "generate", "no prompt", "give --ids 1,2,3 or --prompt TEXT");
  core::set_num_threads(threads);

  auto weights = model::load_llama_weights(dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::vector<int32_t> ids;
  if (!prompt.empty()) {
    tok = tokenizer::load_tokenizer(dir);
    ids = tok->encode(prompt, true);
  } else {
    ids = parse_id_list(ids_text, "--ids");
  }
  if (!ignore_eos) {
    options.stop_ids = model::model_stop_ids(dir, weights.config);
    if (tok && tok->eos_id() >= 0 &&
        std::find(options.stop_ids.begin(), options.stop_ids.end(), tok->eos_id()) == options.stop_ids.end())
      options.stop_ids.push_back(tok->eos_id());
  }
  if (!stop_text.empty())
    for (int32_t id : parse_id_list(stop_text, "--stop_ids")) options.stop_ids.push_back(id);

  const model::LoadedAdapter adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data());

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
