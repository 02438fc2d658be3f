#include "model/lora.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"

namespace zerolora::model {

static const char* kProjNames[kNumProj] = {"q_proj",    "k_proj",  "v_proj",    "o_proj",      "gate_proj",
                                           "up_proj",   "down_proj", "lm_head", "embed_tokens"};

const char* proj_name(Proj p) { return kProjNames[int(p)]; }

bool proj_from_name(const std::string& name, Proj* out) {
  for (int i = 0; i < kNumProj; ++i)
    if (name == kProjNames[i]) { *out = Proj(i); return true; }
  return false;
}

bool proj_has_bias(const io::HfConfig& c, Proj p) {
  if (c.attention_bias) return p == Proj::Q || p == Proj::K || p == Proj::V || p == Proj::O;
  if (c.qkv_bias) return p == Proj::Q || p == Proj::K || p == Proj::V;
  return false;
}

double LoraConfig::scale() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

std::string LoraSlot::peft_prefix() const {
  if (proj == Proj::LmHead) return "base_model.model.lm_head";
  if (proj == Proj::Embed) return "base_model.model.model.embed_tokens";
  const bool attn = proj == Proj::Q || proj == Proj::K || proj == Proj::V || proj == Proj::O;
  return "base_model.model.model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
         proj_name(proj);
}

std::string LoraSlot::a_name() const {
  return peft_prefix() + (proj == Proj::Embed ? ".lora_embedding_A" : ".lora_A.weight");
}
std::string LoraSlot::b_name() const {
  return peft_prefix() + (proj == Proj::Embed ? ".lora_embedding_B" : ".lora_B.weight");
}

std::string BiasSlot::base_name() const {
  const bool attn = proj == Proj::Q || proj == Proj::K || proj == Proj::V || proj == Proj::O;
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + proj_name(proj) + ".bias";
}

std::string BiasSlot::peft_name() const {
  std::string name = "base_model.model." + base_name();
  if (adapted) name.insert(name.size() - 5, ".base_layer");  // PEFT's LoRA wrapper keeps the base as base_layer
  return name;
}

// (in, out) of a projection for this model
static std::pair<int64_t, int64_t> proj_shape(const io::HfConfig& c, Proj p) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  switch (p) {
    case Proj::Q: return {H, q};
    case Proj::K: return {H, kv};
    case Proj::V: return {H, kv};
    case Proj::O: return {q, H};
    case Proj::Gate: return {H, I};
    case Proj::Up: return {H, I};
    case Proj::Down: return {I, H};
    case Proj::LmHead: return {H, c.vocab_size};
    case Proj::Embed: return {c.vocab_size, H};
    default: return {0, 0};
  }
}

LoraLayout::LoraLayout(const io::HfConfig& model, const LoraConfig& lora) : lora_(lora) {
  core::check(lora.r >= 1, "--lora_r", "must be >= 1, got " + std::to_string(lora.r));
  core::check(lora.dropout >= 0 && lora.dropout < 1, "--lora_dropout",
              "must be in [0, 1), got " + std::to_string(lora.dropout));
  core::check(!lora.target_modules.empty(), "--lora_target_modules", "is empty",
              "name at least one of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj");
  bool target[kNumProj] = {};
  for (const auto& name : lora.target_modules) {
    Proj p;
    if (!proj_from_name(name, &p))
      throw core::Error("--lora_target_modules", "unknown module '" + name + "'",
                        "use space-separated names from: q_proj k_proj v_proj o_proj gate_proj up_proj "
                        "down_proj lm_head embed_tokens (a comma inside a value is not a separator)");
    target[int(p)] = true;
  }
  core::check(lora.bias == "none" || lora.bias == "all" || lora.bias == "lora_only", "--lora_bias",
              "unknown value '" + lora.bias + "'", "use none, all or lora_only");
  if (!model.path.empty()) model_dir_ = std::filesystem::path(model.path).parent_path().string();
  index_.assign(model.num_hidden_layers, {});
  auto add = [&](int layer, Proj p) {
    auto [in, out] = proj_shape(model, p);
    LoraSlot s;
    s.layer = layer;
    s.proj = p;
    s.in = in;
    s.out = out;
    s.r = lora.r;
    s.a_offset = numel_;
    numel_ += lora.r * in;
    s.b_offset = numel_;
    numel_ += out * lora.r;
    slots_.push_back(s);
    return int(slots_.size()) - 1;
  };
  if (target[int(Proj::Embed)]) embed_slot_ = add(-1, Proj::Embed);
  for (int l = 0; l < model.num_hidden_layers; ++l) {
    index_[l].fill(-1);
    for (int p = 0; p < int(Proj::LmHead); ++p)
      if (target[p]) index_[l][p] = add(l, Proj(p));
  }
  if (target[int(Proj::LmHead)]) lm_head_slot_ = add(-1, Proj::LmHead);
  lora_numel_ = numel_;
  // Bias slots after every LoRA slot (PEFT: `all` trains every bias, `lora_only` those of adapted layers).
  bias_index_.assign(model.num_hidden_layers, {-1, -1, -1, -1});
  if (lora.bias == "none") return;
  for (int l = 0; l < model.num_hidden_layers; ++l)
    for (int p = 0; p <= int(Proj::O); ++p) {
      if (!proj_has_bias(model, Proj(p))) continue;
      const bool adapted = index_[l][p] >= 0;
      if (lora.bias == "lora_only" && !adapted) continue;
      BiasSlot b;
      b.layer = l;
      b.proj = Proj(p);
      b.n = proj_shape(model, Proj(p)).second;
      b.offset = numel_;
      b.adapted = adapted;
      b.saved = lora.bias == "all";
      numel_ += b.n;
      bias_index_[l][p] = int(bias_slots_.size());
      bias_slots_.push_back(b);
    }
}

const LoraSlot* LoraLayout::find(int layer, Proj proj) const {
  if (proj == Proj::LmHead) return lm_head_slot_ < 0 ? nullptr : &slots_[lm_head_slot_];
  if (proj == Proj::Embed) return embed_slot_ < 0 ? nullptr : &slots_[embed_slot_];
  if (layer < 0 || layer >= int(index_.size())) return nullptr;
  int i = index_[layer][int(proj)];
  return i < 0 ? nullptr : &slots_[i];
}

std::vector<std::pair<int64_t, std::vector<int64_t>>> LoraLayout::flat_tensors() const {
  std::vector<std::pair<int64_t, std::vector<int64_t>>> t;
  for (const auto& s : slots_) {
    t.push_back({s.a_offset, {s.r, s.in}});
    t.push_back({s.b_offset, {s.out, s.r}});
  }
  for (const auto& b : bias_slots_) t.push_back({b.offset, {b.n}});
  return t;
}

const BiasSlot* LoraLayout::find_bias(int layer, Proj proj) const {
  if (layer < 0 || layer >= int(bias_index_.size()) || int(proj) > int(Proj::O)) return nullptr;
  const int i = bias_index_[layer][int(proj)];
  return i < 0 ? nullptr : &bias_slots_[i];
}

void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const auto& s : layout.slots()) {
    if (s.proj == Proj::Embed) {
      std::normal_distribution<double> n(0.0, 1.0);
      for (int64_t i = 0; i < s.r * s.in; ++i) params[s.a_offset + i] = 0.0f;
      for (int64_t i = 0; i < s.out * s.r; ++i) params[s.b_offset + i] = float(n(rng));
      continue;
    }
    const double bound = 1.0 / std::sqrt(double(s.in));
    std::uniform_real_distribution<double> u(-bound, bound);
    for (int64_t i = 0; i < s.r * s.in; ++i) params[s.a_offset + i] = float(u(rng));
    for (int64_t i = 0; i < s.out * s.r; ++i) params[s.b_offset + i] = 0.0f;
  }
  init_bias_params(layout, params);
}

void init_bias_params(const LoraLayout& layout, float* params) {
  if (layout.bias_slots().empty()) return;
  core::check(!layout.model_dir().empty(), "--lora_bias", "the trainable biases start from the base model's, and "
              "this layout has no model folder", "build the layout from a config.json read from the model folder");
  const io::TensorStore store = io::TensorStore::open_model_dir(layout.model_dir());
  for (const auto& b : layout.bias_slots()) {
    core::check(store.has(b.base_name()), store.source(), "has no tensor " + b.base_name() + " for --lora_bias",
                "check config.json matches the weights");
    const core::Tensor t = store.load(b.base_name(), core::DType::F32, {b.n});
    std::copy(t.data<float>(), t.data<float>() + b.n, params + b.offset);
  }
}

}  // namespace zerolora::model
