// init-model, inspect, forward: the model-folder commands.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "io/safetensors.h"
#include "model/adapter_io.h"
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

}  // namespace

int cmd_init_model(int argc, char** argv) {
  std::string preset = "tiny", out, dtype = "f32";
  uint64_t seed = 0;
  int64_t layers = 0;
  train::FlagSet fs("zerolora init-model",
                    "usage: zerolora init-model --out DIR [--preset NAME] [flags]\n"
                    "Write a random model folder (config.json + model.safetensors) in Hugging Face format.");
  fs.add(train::choice_flag("preset", preset, model::preset_names(), "model shape"));
  fs.add(train::string_flag("out", out, "DIR", "folder to create")).mark_required("./tiny-model");
  fs.add(train::seed_flag(seed));
  fs.add(train::choice_flag("dtype", dtype, {"f32", "bf16"}, "tensor dtype in the file"));
  fs.add(train::int_flag("layers", layers,
                         "number of blocks (0 = the preset's), e.g. a 1.1B-shaped model with fewer blocks"));
  if (!parse_flags(fs, argc, argv)) return 0;
  if (layers < 0)
    throw train::FlagError("--layers", std::to_string(layers) + " is out of range: must be >= 0",
                           "pass --layers 0 (the preset's) or a positive number");
  io::HfConfig c = model::preset_config(preset);
  if (layers > 0) c.num_hidden_layers = layers;
  model::RandomInit init;
  init.seed = seed;
  model::write_random_model(out, c, init, dtype == "bf16" ? core::DType::BF16 : core::DType::F32);
  std::printf("wrote %s (%s preset)\n", out.c_str(), preset.c_str());
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  std::string dir;
  int64_t seq = 512, batch = 1, lora_r = 8;
  train::FlagSet fs("zerolora inspect",
                    "usage: zerolora inspect --model_name_or_path DIR [flags]\n"
                    "Describe a Hugging Face model folder and estimate LoRA training memory.");
  fs.add(train::model_name_or_path_flag(dir).with_help("model folder (config.json + safetensors)"));
  fs.accept_positional_as("model_name_or_path");
  fs.add(train::model_max_length_flag(seq).with_help("sequence length for the estimate"));
  fs.add(train::int_flag("per_device_train_batch_size", batch, "micro-batch for the estimate"));
  fs.add(train::lora_r_flag(lora_r).with_help("LoRA rank for the estimate (targets q_proj v_proj)"));
  if (!parse_flags(fs, argc, argv)) return 0;
  if (batch < 1)
    throw train::FlagError("--per_device_train_batch_size", std::to_string(batch) + " is out of range: must be >= 1",
                           "pass a value that is >= 1");
  if (lora_r < 1)
    throw train::FlagError("--lora_r", std::to_string(lora_r) + " is out of range: must be >= 1",
                           "pass a value that is >= 1");

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
  std::string dir, adapter_dir, ids_text;
  bool bf16 = false;
  int64_t threads = 0;
  train::FlagSet fs("zerolora forward",
                    "usage: zerolora forward --model_name_or_path DIR --ids IDS [--adapter DIR] [flags]\n"
                    "Run the model (plus an adapter) on token ids: print the loss (labels = ids) and the next-token "
                    "argmax.");
  fs.add(train::model_name_or_path_flag(dir).with_help("model folder (config.json + safetensors)"));
  fs.accept_positional_as("model_name_or_path");
  fs.add(train::adapter_flag(adapter_dir));
  fs.add(train::string_flag("ids", ids_text, "IDS", "comma-separated token ids, e.g. 1,403,407")).mark_required("1,2,3");
  fs.add(train::bf16_flag(bf16).with_help("store frozen weights in bf16 (compute in fp32)"));
  add_threads_flag(fs, threads);
  if (!parse_flags(fs, argc, argv)) return 0;
  core::set_num_threads(int(threads));
  std::vector<int32_t> ids = parse_token_ids(ids_text, "--ids");
  auto w = model::load_llama_weights(dir, core::DType::F32, bf16 ? core::DType::BF16 : core::DType::F32);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(w.config, adapter_dir);
  model::LlamaModel<float> m(w, adapter.layout.get());
  const int64_t T = int64_t(ids.size()), V = w.config.vocab_size;
  model::ModelInput in;
  in.B = 1, in.T = T, in.input_ids = ids.data();
  std::vector<float> logits(size_t(T * V));
  core::Timer timer;
  m.forward_logits(in, adapter.data(), logits.data());
  const double seconds = timer.seconds();
  const float* last = logits.data() + (T - 1) * V;
  const int64_t argmax = std::max_element(last, last + V) - last;
  if (T > 1) {
    std::vector<int32_t> labels = ids;
    in.labels = labels.data();
    auto res = m.forward_backward(in, adapter.data(), nullptr, 1, 0);
    std::printf("loss %.6f over %lld tokens\n", res.loss_sum / double(res.tokens), (long long)res.tokens);
  }
  std::printf("next_token_argmax %lld (logit %.6f)\n", (long long)argmax, double(last[argmax]));
  std::printf("forward %.3f ms, %.1f tokens/s\n", seconds * 1e3, double(T) / seconds);
  return 0;
}

}  // namespace zerolora::cli
