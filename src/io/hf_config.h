// Hugging Face config.json for LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"  // not needed here; kept because users of this header may rely on it
#include "nlohmann/json_fwd.hpp"

namespace zerolora::io {

struct RopeScaling {
  std::string type;  // "" (none), "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  bool operator==(const RopeScaling&) const = default;
};

struct HfConfig {
  std::string path;          // the config.json it came from
  std::string architecture;  // LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM
  std::string model_type;    // llama | mistral | qwen2
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // null -> num_attention_heads
  int64_t head_dim = 128;            // null -> hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o biases (Llama only; Qwen2 uses qkv_bias)
  bool qkv_bias = false;        // true for Qwen2 (q,k,v have biases, o does not)
  int64_t bos_token_id = 1;               // -1: none (null in config.json)
  std::vector<int64_t> eos_token_ids = {2};  // empty: none
  std::string torch_dtype = "float32";  // "float32" | "float16" | "bfloat16"
  // Sliding-window attention (Mistral; Qwen2 with use_sliding_window): a query sees itself and the
  // sliding_window - 1 keys before it (0: no window). sliding_layers says which layers use it: empty = every
  // layer (Mistral); otherwise one flag per layer (Qwen2: layers >= max_window_layers; or layer_types).
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;
  bool operator==(const HfConfig&) const = default;
};

// The window layer l attends with (0: full causal attention).
int64_t layer_sliding_window(const HfConfig& c, int64_t layer);

// Parses and validates; every refusal is a core::Error naming the file and field and the fix
// (unknown architecture, hidden_act other than silu, heads not dividing hidden, unsupported
// rope_scaling type, mlp_bias, ...).
HfConfig load_hf_config(const std::string& config_json_path);
HfConfig parse_hf_config(const nlohmann::json& j, const std::string& path_for_errors);
nlohmann::json hf_config_to_json(const HfConfig& c);  // writes a config.json HF can load

}  // namespace zerolora::io
