// init-model, inspect, forward: the model-folder commands.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/random_model.h"

namespace zerolora::cli {

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string tok = text.substr(pos, end - pos);
    try {
      size_t used = 0;
      long v = std::stol(tok, &used);
      if (used != tok.size()) throw std::invalid_argument(tok);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      throw core::Error("--ids", "'" + tok + "' is not an integer", "give comma-separated token ids, e.g. 1,2,3");
    }
    pos = end + 1;
  }
  return ids;
}

}  // namespace

int cmd_init_model(int argc, char** argv) {
  CLI::App app{"Write a random model folder (config.json + model.safetensors) in Hugging Face format"};
  std::string preset = "tiny", out, dtype = "f32";
  uint64_t seed = 0;
  app.add_option("--preset", preset, "tiny | small | tinyllama-1.1b")->capture_default_str();
  app.add_option("--out", out, "folder to create")->required();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--dtype", dtype, "f32 | bf16 (tensor dtype in the file)")->capture_default_str();
  int64_t layers = 0;
  app.add_option("--layers", layers, "number of blocks (0 = the preset's), e.g. a 1.1B-shaped model with fewer blocks")
      ->capture_default_str();
  ZL_PARSE(app, argc, argv);
  core::check(dtype == "f32" || dtype == "bf16", "--dtype", "must be f32 or bf16, got '" + dtype + "'");
  io::HfConfig c = model::preset_config(preset);
  core::check(layers >= 0, "--layers", "must be >= 0, got " + std::to_string(layers));
  if (layers > 0) c.num_hidden_layers = layers;
  model::RandomInit init;
  init.seed = seed;
  model::write_random_model(out, c, init, dtype == "bf16" ? core::DType::BF16 : core::DType::F32);
  std::printf("wrote %s (%s preset)\n", out.c_str(), preset.c_str());
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  CLI::App app{"Describe a Hugging Face model folder and estimate LoRA training memory"};
  std::string dir;
  int64_t seq = 512, batch = 1, lora_r = 8;
  app.add_option("model_dir", dir, "model folder (config.json + safetensors)")->required();
  app.add_option("--model_max_length", seq, "sequence length for the estimate")->capture_default_str();
  app.add_option("--per_device_train_batch_size", batch, "micro-batch for the estimate")->capture_default_str();
  app.add_option("--lora_r", lora_r, "LoRA rank for the estimate (targets q_proj v_proj)")->capture_default_str();
  ZL_PARSE(app, argc, argv);

  io::HfConfig c = io::load_hf_config((std::filesystem::path(dir) / "config.json").string());
  io::TensorStore store = io::TensorStore::open_model_dir(dir);
  std::map<std::string, int64_t> dtype_counts;
  int64_t file_bytes = 0, params = 0;
  for (const auto& name : store.names()) {
    const auto& info = store.info(name);
    dtype_counts[info.dtype_name] += 1;
    file_bytes += int64_t(info.nbytes);
    params += core::shape_numel(info.shape);
  }
  std::printf("model          %s\n", dir.c_str());
  std::printf("architecture   %s (model_type %s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("layers         %lld, hidden %lld, intermediate %lld, vocab %lld\n", (long long)c.num_hidden_layers,
              (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.vocab_size);
  std::printf("attention      %lld heads, %lld kv heads (%s), head_dim %lld, rope_theta %g%s%s\n",
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads,
              c.num_key_value_heads == c.num_attention_heads ? "MHA" : "GQA", (long long)c.head_dim, c.rope_theta,
              c.rope_scaling.type.empty() ? "" : ", rope_scaling ", c.rope_scaling.type.c_str());
  std::printf("embeddings     %s\n", c.tie_word_embeddings ? "tied (lm_head = embed_tokens)" : "untied");
  std::printf("parameters     %lld (%.3f B)\n", (long long)params, double(params) / 1e9);
  std::string dts;
  for (const auto& [dt, n] : dtype_counts) dts += (dts.empty() ? "" : ", ") + dt + " x" + std::to_string(n);
  std::printf("tensors        %zu (%s), %s on disk, torch_dtype %s\n", store.names().size(), dts.c_str(),
              human_bytes(double(file_bytes)).c_str(), c.torch_dtype.c_str());

  model::LoraConfig lc;
  lc.r = lora_r;
  model::LoraLayout layout(c, lc);
  const double trainable = double(layout.numel());
  std::printf("\nLoRA training estimate (r %lld on q_proj v_proj, micro-batch %lld x %lld tokens):\n",
              (long long)lora_r, (long long)batch, (long long)seq);
  std::printf("  trainable params   %.0f (%.4f%% of the model)\n", trainable, 100.0 * trainable / double(params));
  std::printf("  adapter + AdamW    %s (fp32 weights, gradients, two moments: 16 bytes/param)\n",
              human_bytes(16 * trainable).c_str());
  model::TrainOptions plain, ckpt;
  ckpt.gradient_checkpointing = true;
  for (const char* prec : {"f32", "bf16"}) {
    const double frozen = double(params) * (std::string(prec) == "f32" ? 4 : 2);
    const double act = double(model::LlamaModel<float>::estimate_activation_bytes(c, &layout, plain, batch, seq));
    const double act_ck = double(model::LlamaModel<float>::estimate_activation_bytes(c, &layout, ckpt, batch, seq));
    std::printf("  --%-4s frozen %s; activations %s (%s with --gradient_checkpointing); total ~%s (~%s)\n",
                prec, human_bytes(frozen).c_str(), human_bytes(act).c_str(), human_bytes(act_ck).c_str(),
                human_bytes(frozen + act + 16 * trainable).c_str(), human_bytes(frozen + act_ck + 16 * trainable).c_str());
  }
  return 0;
}

int cmd_forward(int argc, char** argv) {
  CLI::App app{"Run the model on token ids: print the loss (labels = ids) and the next-token argmax"};
  std::string dir, ids_text;
  bool bf16 = false;
  int threads = 0;
  app.add_option("model_dir", dir, "model folder")->required();
  app.add_option("--ids", ids_text, "comma-separated token ids, e.g. 1,403,407")->required();
  app.add_flag("--bf16", bf16, "store frozen weights in bf16 (compute in fp32)");
  app.add_option("--num_threads", threads, "threads (0 = all cores)");
  ZL_PARSE(app, argc, argv);
  core::set_num_threads(threads);
  std::vector<int32_t> ids = parse_ids(ids_text);
  auto w = model::load_llama_weights(dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  model::LlamaModel<float> m(w, nullptr);
  const int64_t T = int64_t(ids.size()), V = w.config.vocab_size;
  model::ModelInput in;
  in.B = 1, in.T = T, in.input_ids = ids.data();
  std::vector<float> logits(size_t(T * V));
  core::Timer timer;
  m.forward_logits(in, nullptr, logits.data());
  const double seconds = timer.seconds();
  const float* last = logits.data() + (T - 1) * V;
  const int64_t argmax = std::max_element(last, last + V) - last;
  if (T > 1) {
    std::vector<int32_t> labels = ids;
    in.labels = labels.data();
    auto res = m.forward_backward(in, nullptr, nullptr, 1, 0);
    std::printf("loss %.6f over %lld tokens\n", res.loss_sum / double(res.tokens), (long long)res.tokens);
  }
  std::printf("next_token_argmax %lld (logit %.6f)\n", (long long)argmax, double(last[argmax]));
  std::printf("forward %.3f ms, %.1f tokens/s\n", seconds * 1e3, double(T) / seconds);
  return 0;
}

}  // namespace zerolora::cli
