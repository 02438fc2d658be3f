#include "model/lora.h"

#include <cmath>
#include <random>

#include "core/error.h"

namespace zerolora::model {

static const char* kProjNames[kNumProj] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj", "lm_head"};

const char* proj_name(Proj p) { return kProjNames[int(p)]; }

bool proj_from_name(const std::string& name, Proj* out) {
  for (int i = 0; i < kNumProj; ++i)
    if (name == kProjNames[i]) { *out = Proj(i); return true; }
  return false;
}

double LoraConfig::scale() const { return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

std::string LoraSlot::peft_prefix() const {
  if (proj == Proj::LmHead) return "base_model.model.lm_head";
  const bool attn = proj == Proj::Q || proj == Proj::K || proj == Proj::V || proj == Proj::O;
  return "base_model.model.model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
         proj_name(proj);
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
                        "down_proj lm_head (a comma inside a value is not a separator)");
    target[int(p)] = true;
  }
  if (target[int(Proj::LmHead)] && model.tie_word_embeddings)
    throw core::Error("--lora_target_modules", "lm_head is tied to embed_tokens in this model (" + model.path + ")",
                      "drop lm_head from the targets, or use an untied model");
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
  for (int l = 0; l < model.num_hidden_layers; ++l) {
    index_[l].fill(-1);
    for (int p = 0; p < int(Proj::LmHead); ++p)
      if (target[p]) index_[l][p] = add(l, Proj(p));
  }
  if (target[int(Proj::LmHead)]) lm_head_slot_ = add(-1, Proj::LmHead);
}

const LoraSlot* LoraLayout::find(int layer, Proj proj) const {
  if (proj == Proj::LmHead) return lm_head_slot_ < 0 ? nullptr : &slots_[lm_head_slot_];
  if (layer < 0 || layer >= int(index_.size())) return nullptr;
  int i = index_[layer][int(proj)];
  return i < 0 ? nullptr : &slots_[i];
}

void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const auto& s : layout.slots()) {
    const double bound = 1.0 / std::sqrt(double(s.in));
    std::uniform_real_distribution<double> u(-bound, bound);
    for (int64_t i = 0; i < s.r * s.in; ++i) params[s.a_offset + i] = float(u(rng));
    for (int64_t i = 0; i < s.out * s.r; ++i) params[s.b_offset + i] = 0.0f;
  }
}

}  // namespace zerolora::model
