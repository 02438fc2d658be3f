#include "model/adapter_io.h"

#include <filesystem>
#include <fstream>
#include <algorithm>
#include <cmath>
#include <set>
#include <unistd.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace zerolora::model {

namespace fs = std::filesystem;

nlohmann::json peft_adapter_config(const LoraConfig& lora, const std::string& base_model_name_or_path) {
  nlohmann::json j;  // nlohmann::json objects keep keys sorted, as PEFT's sort_keys=True
  j["alpha_pattern"] = nlohmann::json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model_name_or_path;
  j["bias"] = lora.bias;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = lora.alpha;
  j["lora_dropout"] = lora.dropout;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = lora.r;
  j["rank_pattern"] = nlohmann::json::object();
  j["revision"] = nullptr;
  j["target_modules"] = lora.target_modules;
  j["task_type"] = "CAUSAL_LM";
  if (lora.use_rslora) j["use_rslora"] = true;
  // lora_alpha is an int in PEFT's dataclass; keep integral values integral in the file
  if (lora.alpha == double(int64_t(lora.alpha))) j["lora_alpha"] = int64_t(lora.alpha);
  return j;
}

static void write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    core::check(bool(f), tmp.string(), "could not write", "check free disk space and permissions");
  }
  FILE* fp = std::fopen(tmp.c_str(), "rb");
  if (fp) {
    fsync(fileno(fp));
    std::fclose(fp);
  }
  fs::rename(tmp, path);
}

namespace {

constexpr const char* kCardMarker = "This LoRA adapter was written by zerolora";

// A YAML scalar for a path or Hub id: plain when it cannot be misread, else double-quoted (JSON escapes are
// valid YAML double-quoted escapes).
std::string yaml_scalar(const std::string& v) {
  bool plain = !v.empty() && v.find(": ") == std::string::npos && v.find(" #") == std::string::npos &&
               v.back() != ':' && v.back() != ' ' && v.front() != ' ';
  for (unsigned char c : v)
    if (c < 0x20 || c == 0x7f || c == '"' || c == '\'' || c == '\\') plain = false;
  if (plain && std::string("-?:,[]{}#&*!|>%@`").find(v.front()) != std::string::npos) plain = false;
  for (const char* word : {"null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
                           "Yes", "no", "No", "on", "On", "off", "Off"})
    if (v == word) plain = false;
  if (plain && v.find_first_not_of("0123456789.+-eE") == std::string::npos) plain = false;  // a number
  return plain ? v : nlohmann::json(v).dump();
}

}  // namespace

std::string peft_model_card(const std::string& base_model_name_or_path) {
  std::string card = "---\n";
  if (!base_model_name_or_path.empty()) card += "base_model: " + yaml_scalar(base_model_name_or_path) + "\n";
  card += "library_name: peft\n---\n\n# Model Card for Model ID\n\n";
  card += std::string(kCardMarker) + " in PEFT's format: load it with `PeftModel.from_pretrained(base_model, "
          "this_folder)`.\n\n### Framework versions\n\n- zerolora (PEFT LoRA adapter format)\n";
  return card;
}

void save_peft_adapter(const std::string& dir, const LoraLayout& layout, const float* params,
                       const std::string& base_model_name_or_path, core::DType dtype) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, core::Tensor>> tensors;
  for (const auto& s : layout.slots()) {
    core::Tensor a = core::Tensor::borrow(core::DType::F32, {s.r, s.in}, const_cast<float*>(params + s.a_offset), {});
    core::Tensor b = core::Tensor::borrow(core::DType::F32, {s.out, s.r}, const_cast<float*>(params + s.b_offset), {});
    tensors.push_back({s.a_name(), a.to(dtype)});
    tensors.push_back({s.b_name(), b.to(dtype)});
  }
  // --lora_bias all: every trained bias under PEFT's name; lora_only: none (PEFT 0.12 saves none either)
  for (const auto& b : layout.bias_slots()) {
    if (!b.saved) continue;
    core::Tensor t = core::Tensor::borrow(core::DType::F32, {b.n}, const_cast<float*>(params + b.offset), {});
    tensors.push_back({b.peft_name(), t.to(dtype)});
  }
  io::write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors);
  write_text_atomic(fs::path(dir) / "adapter_config.json",
                    peft_adapter_config(layout.config(), base_model_name_or_path).dump(2) + "\n");
  const fs::path readme = fs::path(dir) / "README.md";
  bool ours = true;
  if (fs::exists(readme)) {
    std::ifstream f(readme, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ours = text.find(kCardMarker) != std::string::npos;
  }
  if (ours) write_text_atomic(readme, peft_model_card(base_model_name_or_path));
}

LoraConfig read_peft_adapter_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "adapter_config.json";
  std::ifstream f(path);
  core::check(bool(f), path.string(), "not found", "point --lora_weight_path at a PEFT adapter folder");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw core::Error(path.string(), std::string("is not valid JSON: ") + e.what());
  }
  core::check(j.is_object(), path.string(), "is not a JSON object");
  core::check(j.value("peft_type", "") == "LORA", path.string() + ":peft_type",
              "is not \"LORA\"", "only LoRA adapters are supported");
  // Settings that change what the adapter computes and that are not implemented here: refused by name rather
  // than run as plain LoRA at the global r / alpha.
  const std::string where = path.string() + ":";
  for (const char* key : {"alpha_pattern", "rank_pattern"})
    if (j.contains(key) && !j[key].is_null() && !(j[key].is_object() && j[key].empty()))
      throw core::Error(where + key, "sets a per-module " + std::string(key[0] == 'a' ? "lora_alpha" : "rank") +
                        " (" + j[key].dump() + "), which zerolora does not implement",
                        "use an adapter with one r and lora_alpha for every module");
  if (j.value("use_dora", false))
    throw core::Error(where + "use_dora", "is true: DoRA adapters are not supported", "use a plain LoRA adapter");
  if (j.value("fan_in_fan_out", false))
    throw core::Error(where + "fan_in_fan_out", "is true (GPT-2 Conv1D weights); LLaMA-family linear layers are not",
                      "use an adapter made for this model (fan_in_fan_out false)");
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null())
    throw core::Error(where + "layers_to_transform", "adapts only some layers (" + j["layers_to_transform"].dump() +
                      "), which zerolora does not implement", "use an adapter on every layer");
  if (j.contains("target_modules") && j["target_modules"].is_string())
    throw core::Error(where + "target_modules", "is a pattern (" + j["target_modules"].dump() + ")",
                      "list the module names, e.g. [\"q_proj\", \"v_proj\"] (regex / all-linear targets are not "
                      "supported)");
  LoraConfig c;
  try {
    core::check(j.at("r").is_number_integer() && j["r"].get<int64_t>() >= 1, path.string() + ":r",
                "must be a positive integer, got " + j["r"].dump());
    c.r = j.at("r").get<int64_t>();
    c.alpha = j.value("lora_alpha", 8.0);
    c.dropout = j.value("lora_dropout", 0.0);
    c.use_rslora = j.value("use_rslora", false);
    c.bias = j.value("bias", std::string("none"));
    core::check(c.bias == "none" || c.bias == "all" || c.bias == "lora_only", path.string() + ":bias",
                "is \"" + c.bias + "\"", "PEFT's bias is none, all or lora_only");
    const auto& t = j.at("target_modules");
    core::check(t.is_array(), path.string() + ":target_modules", "is not a list of module names",
                "regex / all-linear target_modules are not supported; list the module names");
    c.target_modules = t.get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw core::Error(path.string(), std::string("bad or missing field: ") + e.what());
  }
  return c;
}

LoadedAdapter load_adapter_for_model(const io::HfConfig& config, const std::string& dir) {
  LoadedAdapter a;
  if (dir.empty()) return a;
  a.layout = std::make_unique<LoraLayout>(config, read_peft_adapter_config(dir));
  a.params.assign(size_t(a.layout->numel()), 0.f);
  init_bias_params(*a.layout, a.params.data());  // lora_only: the file holds no biases (as PEFT's)
  load_peft_adapter(dir, *a.layout, a.params.data());
  return a;
}

void load_peft_adapter(const std::string& dir, const LoraLayout& layout, float* params) {
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  core::check(fs::exists(path), path, "not found",
              "the adapter folder needs adapter_model.safetensors (adapter_model.bin is not supported)");
  load_adapter_tensors(path, layout, params);
}

namespace {

// PEFT saves the frozen matrix of a LoRA'd lm_head / embed_tokens beside the adapter
// ("....lm_head.base_layer.weight", "....embed_tokens.base_layer.weight") and its load puts that copy into the
// model. A copy equal to the base model's own tensor changes nothing and is accepted; one that differs would
// make PEFT compute with other weights than the base folder's, so it is refused (the fix names the base).
bool check_base_layer_copy(const std::string& path, const io::TensorStore& adapter, const std::string& name,
                           const LoraLayout& layout) {
  static const std::string wrapper = "base_model.model.";
  std::string base;
  if (name == wrapper + "lm_head.base_layer.weight") base = "lm_head.weight";
  else if (name == wrapper + "model.embed_tokens.base_layer.weight") base = "model.embed_tokens.weight";
  else return false;
  const Proj p = base[0] == 'l' ? Proj::LmHead : Proj::Embed;
  if (!layout.find(-1, p)) return false;  // no LoRA there: PEFT would not have written it
  core::check(!layout.model_dir().empty(), path, "holds " + name + " (PEFT's copy of the frozen weight), and the "
              "base model's folder is unknown here", "load the adapter together with its base model folder");
  const io::TensorStore store = io::TensorStore::open_model_dir(layout.model_dir());
  if (!store.has(base)) base = "model.embed_tokens.weight";  // a tied lm_head is the embedding
  const io::TensorInfo& info = store.info(base);
  const core::Tensor want = store.load(base, core::DType::F32, info.shape);
  const core::Tensor got = adapter.load(name, core::DType::F32, info.shape);
  double max_diff = 0;
  for (int64_t i = 0; i < want.numel(); ++i)
    max_diff = std::max(max_diff, double(std::abs(want.data<float>()[i] - got.data<float>()[i])));
  core::check(max_diff == 0, path, "tensor " + name + " (PEFT's saved copy of the frozen " + base +
              ") differs from the base model's (max |difference| " + std::to_string(max_diff) +
              "); PEFT would compute with the copy", "load the adapter with the base model (and dtype) it was "
              "trained on");
  return true;
}

}  // namespace

void load_adapter_tensors(const std::string& path, const LoraLayout& layout, float* params) {
  io::TensorStore store = io::TensorStore::open_file(path);
  std::set<std::string> used;
  for (const auto& s : layout.slots()) {
    for (int which = 0; which < 2; ++which) {
      // PEFT saves without the adapter name; some tools keep ".default": accept both
      std::string name = which == 0 ? s.a_name() : s.b_name();
      if (!store.has(name)) {
        std::string alt = s.proj == Proj::Embed ? name + ".default"
                                                : s.peft_prefix() + (which == 0 ? ".lora_A.default.weight"
                                                                                : ".lora_B.default.weight");
        core::check(store.has(alt), path, "missing tensor " + name,
                    "the adapter does not match --lora_target_modules / the model's layers");
        name = alt;
      }
      core::Shape shape = which == 0 ? core::Shape{s.r, s.in} : core::Shape{s.out, s.r};
      core::Tensor t = store.load(name, core::DType::F32, shape);
      std::copy(t.data<float>(), t.data<float>() + t.numel(), params + (which == 0 ? s.a_offset : s.b_offset));
      used.insert(name);
    }
  }
  // --lora_bias all: the trained biases are in the file; lora_only: they are not (PEFT saves none), and the
  // slots keep what the caller put there (the base model's biases, init_bias_params).
  for (const auto& b : layout.bias_slots()) {
    if (!b.saved) continue;
    core::check(store.has(b.peft_name()), path, "missing tensor " + b.peft_name() + " (bias \"all\")",
                "the adapter does not match --lora_bias / the model");
    core::Tensor t = store.load(b.peft_name(), core::DType::F32, {b.n});
    std::copy(t.data<float>(), t.data<float>() + b.n, params + b.offset);
    used.insert(b.peft_name());
  }
  for (const auto& name : store.names())
    if (!used.count(name) && !check_base_layer_copy(path, store, name, layout))
      throw core::Error(path, "tensor " + name + " has no place in this LoRA layout",
                        "train with the adapter's target_modules (see its adapter_config.json)");
}

}  // namespace zerolora::model
