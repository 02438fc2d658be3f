// Hugging Face config.json: parse + validate (LlamaConfig / MistralConfig / Qwen2Config semantics,
// transformers v4 and v5 spellings) and write back.
#include "io/hf_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "nlohmann/json.hpp"

namespace zerolora::io {

using json = nlohmann::json;
using core::Error;

namespace {

// Class defaults of the transformers config classes, used for keys a config.json leaves out.
struct ArchitectureDefaults {
  const char* architecture;
  const char* model_type;
  int64_t vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
  int64_t num_key_value_heads;  // when the key is absent; 0 = num_attention_heads (null always means that)
  int64_t max_position_embeddings;
  int64_t bos_token_id;  // -1: none
  std::vector<int64_t> eos_token_ids;
  int64_t sliding_window;  // when the key is absent
};

const ArchitectureDefaults kArchitectures[] = {
    {"LlamaForCausalLM", "llama", 32000, 4096, 11008, 32, 32, 0, 2048, 1, {2}, 0},
    {"MistralForCausalLM", "mistral", 32000, 4096, 14336, 32, 32, 8, 4096 * 32, 1, {2}, 4096},
    {"Qwen2ForCausalLM", "qwen2", 151936, 4096, 22016, 32, 32, 32, 32768, -1, {}, 4096},
};
const char* kSupportedArchitectures = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// Typed access to one JSON object's keys; every failure names path:prefix+key.
class Fields {
 public:
  Fields(const json& j, const std::string& path, const std::string& prefix = "")
      : j_(j), path_(path), prefix_(prefix) {}
  std::string where(const std::string& key) const { return path_ + ":" + prefix_ + key; }
  bool contains(const std::string& key) const { return j_.contains(key); }
  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const std::string& key) const { return j_.at(key); }

  int64_t integer(const std::string& key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::nearbyint(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e18)
      return int64_t(v.get<double>());
    throw Error(where(key), "must be an integer, not " + v.dump(), "fix config.json");
  }
  int64_t positive(const std::string& key, int64_t fallback) const {
    int64_t v = integer(key, fallback);
    if (v <= 0) throw Error(where(key), "must be positive, not " + std::to_string(v), "fix config.json");
    return v;
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_[key];
    if (!v.is_number()) throw Error(where(key), "must be a number, not " + v.dump(), "fix config.json");
    return v.get<double>();
  }
  double positive_number(const std::string& key, double fallback) const {
    double v = number(key, fallback);
    if (!(v > 0) || !std::isfinite(v))
      throw Error(where(key), "must be a positive number, not " + json(v).dump(), "fix config.json");
    return v;
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) throw Error(where(key), "must be true or false, not " + j_[key].dump(), "fix config.json");
    return j_[key].get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) throw Error(where(key), "must be a string, not " + j_[key].dump(), "fix config.json");
    return j_[key].get<std::string>();
  }

 private:
  const json& j_;
  const std::string& path_;
  std::string prefix_;
};

const ArchitectureDefaults& find_architecture(const Fields& f) {
  if (f.has("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string())
      throw Error(f.where("architectures"), "must be a list such as [\"LlamaForCausalLM\"], not " + a.dump(),
                  "fix config.json");
    const std::string name = a[0].get<std::string>();
    for (const auto& d : kArchitectures)
      if (name == d.architecture) return d;
    throw Error(f.where("architectures"),
                "architecture '" + name + "' is not supported (supported: " + kSupportedArchitectures + ")",
                "use a model of a supported architecture");
  }
  // AutoModelForCausalLM dispatches on model_type alone, so a config without architectures is still usable.
  const std::string model_type = f.string("model_type", "");
  for (const auto& d : kArchitectures)
    if (model_type == d.model_type) return d;
  throw Error(f.where("architectures"),
              model_type.empty() ? std::string("missing, and so is model_type")
                                 : "missing, and model_type '" + model_type + "' is not supported",
              std::string("supported architectures: ") + kSupportedArchitectures);
}

// rope_scaling (v4) or rope_parameters (v5) object. theta is read only from rope_parameters.
RopeScaling parse_rope_object(const json& obj, const std::string& path, const std::string& field, bool with_theta,
                              double* theta) {
  const std::string where = path + ":" + field;
  if (!obj.is_object())
    throw Error(where, "must be null or an object such as {\"rope_type\": \"linear\", \"factor\": 2.0}, not " + obj.dump(),
                "fix config.json");
  Fields f(obj, path, field + ".");
  // Llama-3.1 writes rope_type; older configs write type; some write both.
  std::string type = f.string("rope_type", "");
  const std::string legacy_type = f.string("type", "");
  if (!type.empty() && !legacy_type.empty() && type != legacy_type)
    throw Error(where, "rope_type '" + type + "' and type '" + legacy_type + "' disagree", "keep one of them");
  if (type.empty()) type = legacy_type;
  if (type.empty()) throw Error(where, "has no rope_type", "add \"rope_type\": \"linear\" or \"llama3\", or set it to null");

  std::set<std::string> allowed = {"rope_type", "type"};
  if (with_theta) allowed.insert("rope_theta");
  RopeScaling s;
  if (type == "default") {
    // no scaling
  } else if (type == "linear") {
    allowed.insert("factor");
    s.type = type;
  } else if (type == "llama3") {
    allowed.insert({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
    s.type = type;
  } else {
    throw Error(f.where("rope_type"), "rope type '" + type + "' is not supported (supported: default, linear, llama3)",
                "use a model whose RoPE is unscaled or uses linear or llama3 scaling");
  }
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (!allowed.count(it.key()))
      throw Error(f.where(it.key()), "is not used by rope type '" + type + "', and zerolora will not ignore it",
                  "remove it if it has no effect, or use a model without it");
  auto required = [&](const std::string& key) {
    if (!f.has(key)) throw Error(f.where(key), "is required for rope type '" + type + "'", "add it to config.json");
  };
  if (s.type == "linear" || s.type == "llama3") {
    required("factor");
    s.factor = f.positive_number("factor", 1.0);
  }
  if (s.type == "llama3") {
    for (const char* key : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) required(key);
    s.low_freq_factor = f.positive_number("low_freq_factor", 1.0);
    s.high_freq_factor = f.positive_number("high_freq_factor", 4.0);
    s.original_max_position_embeddings = f.positive("original_max_position_embeddings", 8192);
    if (!(s.high_freq_factor > s.low_freq_factor))
      throw Error(f.where("high_freq_factor"), "must be greater than low_freq_factor (the llama3 blend divides by their difference)",
                  "fix config.json");
  }
  if (with_theta && f.has("rope_theta")) *theta = f.positive_number("rope_theta", 10000.0);
  return s;
}

void parse_rope(const Fields& f, const json& j, HfConfig& c) {
  const bool has_top_theta = f.has("rope_theta");
  const double top_theta = f.positive_number("rope_theta", 10000.0);
  RopeScaling top_scaling;
  if (f.has("rope_scaling")) top_scaling = parse_rope_object(j["rope_scaling"], c.path, "rope_scaling", false, nullptr);
  if (!f.has("rope_parameters")) {
    c.rope_theta = top_theta;
    c.rope_scaling = top_scaling;
    return;
  }
  // transformers v5: {rope_type, rope_theta, ...}. A dict of such dicts per layer type is another model family.
  const json& p = j["rope_parameters"];
  if (p.is_object() && !p.empty() && p.begin()->is_object())
    throw Error(f.where("rope_parameters"), "per-layer-type RoPE parameters are not supported",
                "use a LLaMA, Mistral or Qwen2 model with one RoPE setting for all layers");
  double theta = top_theta;
  RopeScaling scaling = parse_rope_object(p, c.path, "rope_parameters", true, &theta);
  if (has_top_theta && theta != top_theta)
    throw Error(f.where("rope_parameters"), "rope_theta " + json(theta).dump() + " disagrees with the top-level rope_theta " +
                                                json(top_theta).dump(), "keep one of them");
  if (f.has("rope_scaling") && !(scaling == top_scaling))
    throw Error(f.where("rope_parameters"), "disagrees with rope_scaling", "keep one of them");
  c.rope_theta = theta;
  c.rope_scaling = scaling;
}

std::string parse_torch_dtype(const Fields& f) {
  auto read = [&](const std::string& key) -> std::string {
    std::string v = f.string(key, "");
    if (v.rfind("torch.", 0) == 0) v = v.substr(6);  // str(torch.bfloat16) spelling
    if (!v.empty() && v != "float32" && v != "float16" && v != "bfloat16")
      throw Error(f.where(key), "'" + v + "' is not a dtype zerolora loads", "set it to float32, float16 or bfloat16");
    return v;
  };
  // transformers v5 writes dtype, v4 torch_dtype.
  const std::string torch_dtype = read("torch_dtype"), dtype = read("dtype");
  if (!torch_dtype.empty() && !dtype.empty() && torch_dtype != dtype)
    throw Error(f.where("dtype"), "'" + dtype + "' disagrees with torch_dtype '" + torch_dtype + "'", "keep one of them");
  if (!dtype.empty()) return dtype;
  return torch_dtype.empty() ? "float32" : torch_dtype;
}

void parse_token_ids(const Fields& f, const ArchitectureDefaults& d, HfConfig& c) {
  c.bos_token_id = f.contains("bos_token_id") ? (f.has("bos_token_id") ? f.integer("bos_token_id", -1) : -1)
                                               : d.bos_token_id;
  c.eos_token_ids = d.eos_token_ids;
  if (!f.contains("eos_token_id")) return;
  const json& eos = f.at("eos_token_id");
  c.eos_token_ids.clear();
  if (eos.is_null()) return;
  if (eos.is_number_integer()) {
    c.eos_token_ids.push_back(eos.get<int64_t>());
    return;
  }
  if (!eos.is_array()) throw Error(f.where("eos_token_id"), "must be an integer or a list of integers, not " + eos.dump(), "fix config.json");
  for (const json& id : eos) {
    if (!id.is_number_integer())
      throw Error(f.where("eos_token_id"), "must be an integer or a list of integers, not " + eos.dump(), "fix config.json");
    c.eos_token_ids.push_back(id.get<int64_t>());
  }
}

void parse_sliding_window(const Fields& f, const ArchitectureDefaults& d, HfConfig& c) {
  auto window = [&]() -> int64_t {
    if (!f.contains("sliding_window")) return d.sliding_window;
    int64_t w = f.integer("sliding_window", 0);  // null: no window
    if (w < 0) throw Error(f.where("sliding_window"), "must not be negative", "fix config.json");
    return w;
  };
  const int64_t L = c.num_hidden_layers;
  if (c.model_type == "mistral") c.sliding_window = window();
  // Qwen2 keeps sliding_window in its configs but applies it only when use_sliding_window is true, and then
  // (Qwen2Config: layer_types, or the flash-attention path of older transformers) only to the layers
  // i >= max_window_layers.
  if (c.model_type == "qwen2") {
    c.sliding_window = f.boolean("use_sliding_window", false) ? window() : 0;
    if (c.sliding_window > 0) {
      const int64_t first = f.integer("max_window_layers", 28);  // Qwen2Config's default
      if (first < 0) throw Error(f.where("max_window_layers"), "must not be negative", "fix config.json");
      if (first > 0) {
        c.sliding_layers.assign(size_t(L), false);
        for (int64_t l = first; l < L; ++l) c.sliding_layers[size_t(l)] = true;
      }
    }
  }
  // Newer transformers also write layer_types (which then decide); a sliding layer needs a window.
  if (f.has("layer_types")) {
    const json& types = f.at("layer_types");
    if (!types.is_array() || int64_t(types.size()) != L)
      throw Error(f.where("layer_types"), "must list one type per layer (" + std::to_string(L) + ")",
                  "fix config.json");
    std::vector<bool> sliding;
    for (const json& t : types) {
      sliding.push_back(t == "sliding_attention");
      if (t == "full_attention") continue;
      if (t != "sliding_attention")
        throw Error(f.where("layer_types"), "layer type " + t.dump() + " is not supported (full_attention, sliding_attention)",
                    "use a LLaMA, Mistral or Qwen2 model");
      if (c.sliding_window == 0)
        throw Error(f.where("layer_types"), "names sliding_attention layers but no sliding_window is in use",
                    "make layer_types, sliding_window and use_sliding_window agree");
    }
    c.sliding_layers = sliding;
  }
  // one representation per meaning: no window, or every layer sliding, keeps the list empty
  bool all = true;
  for (bool s : c.sliding_layers) all = all && s;
  if (c.sliding_window == 0 || all) c.sliding_layers.clear();
}

// Options that LlamaConfig & co. accept but zerolora does not implement: refused unless at their no-op value.
void refuse_unsupported_options(const Fields& f, HfConfig& c) {
  if (f.boolean("mlp_bias", false))
    throw Error(f.where("mlp_bias"), "MLP biases are not supported", "use a model with mlp_bias false");
  if (f.integer("pretraining_tp", 1) != 1)
    throw Error(f.where("pretraining_tp"), "tensor-parallel slicing (pretraining_tp != 1) is not supported",
                "set pretraining_tp to 1 (it changes only rounding, not the model)");
  if (f.number("attention_dropout", 0.0) != 0.0)
    throw Error(f.where("attention_dropout"), "attention dropout is not supported", "set attention_dropout to 0.0");
  if (f.number("partial_rotary_factor", 1.0) != 1.0)
    throw Error(f.where("partial_rotary_factor"), "partial RoPE is not supported", "use a model with full RoPE");
  if (f.has("quantization_config"))
    throw Error(f.where("quantization_config"), "pre-quantized checkpoints (GPTQ, AWQ, bitsandbytes, ...) are not supported",
                "use the unquantized model; --q_lora quantizes it at load");
  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu")
    throw Error(f.where("hidden_act"), "activation '" + act + "' is not supported (the MLP is SwiGLU with silu)",
                "use a model with hidden_act silu");
  const bool attention_bias = f.boolean("attention_bias", false);
  if (attention_bias && c.model_type != "llama")
    throw Error(f.where("attention_bias"), c.architecture + " has no attention_bias option, and zerolora will not ignore it",
                "remove attention_bias from config.json");
  c.attention_bias = attention_bias;
  c.qkv_bias = c.model_type == "qwen2";  // Qwen2 attention: q/k/v with bias, o without
}

}  // namespace

HfConfig parse_hf_config(const json& j, const std::string& path) {
  if (!j.is_object()) throw Error(path, "is not a JSON object", "pass a Hugging Face config.json");
  Fields f(j, path);
  const ArchitectureDefaults& d = find_architecture(f);
  HfConfig c;
  c.path = path;
  c.architecture = d.architecture;
  c.model_type = d.model_type;
  const std::string model_type = f.string("model_type", d.model_type);
  if (model_type != d.model_type)
    throw Error(f.where("model_type"), "is '" + model_type + "' but " + d.architecture + " has model_type '" +
                                           d.model_type + "'", "make architectures and model_type agree");

  c.vocab_size = f.positive("vocab_size", d.vocab_size);
  c.hidden_size = f.positive("hidden_size", d.hidden_size);
  c.intermediate_size = f.positive("intermediate_size", d.intermediate_size);
  c.num_hidden_layers = f.positive("num_hidden_layers", d.num_hidden_layers);
  c.num_attention_heads = f.positive("num_attention_heads", d.num_attention_heads);
  c.max_position_embeddings = f.positive("max_position_embeddings", d.max_position_embeddings);
  if (!f.contains("num_key_value_heads"))
    c.num_key_value_heads = d.num_key_value_heads ? d.num_key_value_heads : c.num_attention_heads;
  else
    c.num_key_value_heads = f.positive("num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw Error(f.where("num_key_value_heads"), std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                                    std::to_string(c.num_attention_heads), "fix config.json");
  if (f.has("head_dim")) {
    c.head_dim = f.positive("head_dim", 0);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      throw Error(f.where("num_attention_heads"), std::to_string(c.num_attention_heads) + " does not divide hidden_size " +
                                                      std::to_string(c.hidden_size) + " and head_dim is not given",
                  "fix config.json");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    throw Error(f.where("head_dim"), "is " + std::to_string(c.head_dim) + "; RoPE needs an even head dimension", "fix config.json");

  c.rms_norm_eps = f.positive_number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.torch_dtype = parse_torch_dtype(f);
  refuse_unsupported_options(f, c);
  parse_rope(f, j, c);
  parse_token_ids(f, d, c);
  parse_sliding_window(f, d, c);
  return c;
}

int64_t layer_sliding_window(const HfConfig& c, int64_t layer) {
  if (c.sliding_window <= 0) return 0;
  if (c.sliding_layers.empty()) return c.sliding_window;
  return c.sliding_layers.at(size_t(layer)) ? c.sliding_window : 0;
}

HfConfig load_hf_config(const std::string& config_json_path) {
  namespace fs = std::filesystem;
  if (!fs::exists(config_json_path))
    throw Error(config_json_path, "file not found",
                "pass a Hugging Face model folder: config.json next to the *.safetensors weights");
  std::ifstream in(config_json_path, std::ios::binary);
  if (!in) throw Error(config_json_path, "cannot read the file", "check its permissions");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(config_json_path, std::string("not valid JSON: ") + e.what(), "fix or re-download config.json");
  }
  return parse_hf_config(j, config_json_path);
}

json hf_config_to_json(const HfConfig& c) {
  json j;
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else if (c.rope_scaling.type == "linear") {
    // {type, factor}: the only form transformers < 4.43 accepts, and newer versions read it too.
    j["rope_scaling"] = {{"type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else {
    j["rope_scaling"] = {{"rope_type", c.rope_scaling.type},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id >= 0 ? json(c.bos_token_id) : json(nullptr);
  if (c.eos_token_ids.empty())
    j["eos_token_id"] = nullptr;
  else if (c.eos_token_ids.size() == 1)
    j["eos_token_id"] = c.eos_token_ids[0];
  else
    j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.torch_dtype;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  if (c.model_type == "llama") {
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else if (c.model_type == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    if (!c.sliding_layers.empty()) {  // read from layer_types: written back the same way
      json types = json::array();
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        types.push_back(layer_sliding_window(c, l) > 0 ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
  } else if (c.model_type == "qwen2") {
    // the sliding layers as max_window_layers (the first sliding layer; every transformers version reads it)
    // when they are a suffix, else as layer_types
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    int64_t first = c.num_hidden_layers;
    while (first > 0 && layer_sliding_window(c, first - 1) > 0) --first;
    bool suffix = true;
    for (int64_t l = 0; l < first; ++l) suffix = suffix && layer_sliding_window(c, l) == 0;
    j["max_window_layers"] = c.sliding_window > 0 ? first : c.num_hidden_layers;
    if (c.sliding_window > 0 && !suffix) {
      json types = json::array();
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        types.push_back(layer_sliding_window(c, l) > 0 ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
  }
  return j;
}

}  // namespace zerolora::io
