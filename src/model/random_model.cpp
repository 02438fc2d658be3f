#include "model/random_model.h"

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace zerolora::model {

std::vector<std::string> preset_names() { return {"tiny", "small", "tinyllama-1.1b", "llama3-8b"}; }

io::HfConfig preset_config(const std::string& preset) {
  io::HfConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  if (preset == "tiny") {
    c.vocab_size = 256, c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 512;
  } else if (preset == "small") {
    c.vocab_size = 512, c.hidden_size = 256, c.intermediate_size = 688, c.num_hidden_layers = 4;
    c.num_attention_heads = 8, c.num_key_value_heads = 4, c.max_position_embeddings = 1024;
  } else if (preset == "tinyllama-1.1b") {
    c.vocab_size = 32000, c.hidden_size = 2048, c.intermediate_size = 5632, c.num_hidden_layers = 22;
    c.num_attention_heads = 32, c.num_key_value_heads = 4, c.max_position_embeddings = 2048;
    c.torch_dtype = "bfloat16";
  } else if (preset == "llama3-8b") {  // Meta-Llama-3-8B's shapes
    c.vocab_size = 128256, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_hidden_layers = 32;
    c.num_attention_heads = 32, c.num_key_value_heads = 8, c.max_position_embeddings = 8192;
    c.rope_theta = 500000.0;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001};
    c.torch_dtype = "bfloat16";
  } else {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    throw core::Error("--preset", "unknown preset '" + preset + "'", "use one of: " + names);
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  c.tie_word_embeddings = false;
  return c;
}

TensorSource random_tensor_source(const RandomInit& init) {
  return [init](const std::string& name, core::DType dtype, const core::Shape& shape) {
    // seed from the name so every tensor is reproducible on its own, whatever order it is asked in
    uint64_t h = init.seed * 0x9e3779b97f4a7c15ull + 1469598103934665603ull;
    for (char ch : name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
    std::mt19937_64 rng(h);
    std::normal_distribution<double> nd(0.0, 1.0);
    const bool is_norm = name.find("norm.weight") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    core::Tensor f = core::Tensor::empty(core::DType::F64, shape);
    double* p = f.data<double>();
    for (int64_t i = 0; i < f.numel(); ++i) {
      if (is_norm)
        p[i] = init.jitter_norms ? 1.0 + 0.1 * nd(rng) : 1.0;
      else
        p[i] = (is_bias ? 0.02 : init.init_std) * nd(rng);
    }
    return dtype == core::DType::F64 ? f : f.to(dtype);
  };
}

void write_random_model(const std::string& dir, const io::HfConfig& config, const RandomInit& init,
                        core::DType file_dtype) {
  core::check(file_dtype == core::DType::F32 || file_dtype == core::DType::BF16, "init-model",
              "file dtype must be F32 or BF16");
  std::filesystem::create_directories(dir);
  io::HfConfig c = config;
  c.torch_dtype = file_dtype == core::DType::BF16 ? "bfloat16" : "float32";
  auto source = random_tensor_source(init);
  std::vector<std::pair<std::string, core::Tensor>> tensors;
  for (const auto& [name, shape] : llama_tensor_shapes(c)) tensors.push_back({name, source(name, file_dtype, shape)});
  io::write_safetensors((std::filesystem::path(dir) / "model.safetensors").string(), tensors);
  std::ofstream f(std::filesystem::path(dir) / "config.json");
  f << io::hf_config_to_json(c).dump(2) << "\n";
  core::check(bool(f), dir, "could not write config.json", "check the folder is writable");
}

}  // namespace zerolora::model
