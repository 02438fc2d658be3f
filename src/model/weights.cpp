#include "model/weights.h"

#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/nf4.h"

namespace zerolora::model {

namespace {

bool has_bias(const io::HfConfig& c, Proj p) { return proj_has_bias(c, p); }

std::string layer_tensor(int l, Proj p, const char* what) {
  const bool attn = p == Proj::Q || p == Proj::K || p == Proj::V || p == Proj::O;
  return "model.layers." + std::to_string(l) + (attn ? ".self_attn." : ".mlp.") + proj_name(p) + "." + what;
}

core::Shape proj_weight_shape(const io::HfConfig& c, Proj p) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  switch (p) {
    case Proj::Q: return {q, H};
    case Proj::K: return {kv, H};
    case Proj::V: return {kv, H};
    case Proj::O: return {H, q};
    case Proj::Gate: return {I, H};
    case Proj::Up: return {I, H};
    case Proj::Down: return {H, I};
    default: return {};
  }
}

}  // namespace

std::vector<std::pair<std::string, core::Shape>> llama_tensor_shapes(const io::HfConfig& c) {
  std::vector<std::pair<std::string, core::Shape>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    out.push_back({"model.layers." + std::to_string(l) + ".input_layernorm.weight", {c.hidden_size}});
    for (int p = 0; p < 7; ++p) {
      core::Shape ws = proj_weight_shape(c, Proj(p));
      out.push_back({layer_tensor(l, Proj(p), "weight"), ws});
      if (has_bias(c, Proj(p))) out.push_back({layer_tensor(l, Proj(p), "bias"), {ws[0]}});
    }
    out.push_back({"model.layers." + std::to_string(l) + ".post_attention_layernorm.weight", {c.hidden_size}});
  }
  out.push_back({"model.norm.weight", {c.hidden_size}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}});
  return out;
}

int64_t LlamaWeights::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, shape] : llama_tensor_shapes(config)) n += core::shape_numel(shape);
  return n;
}

int64_t LlamaWeights::frozen_bytes() const {
  int64_t n = int64_t(embed.nbytes()) + int64_t(final_norm.nbytes());
  for (const auto& l : layers) {
    n += int64_t(l.input_norm.nbytes() + l.post_norm.nbytes());
    for (const auto& w : l.proj) n += w.resident_bytes();
  }
  if (!config.tie_word_embeddings) n += int64_t(lm_head.weight.nbytes());
  return n;
}

void round_to_fp16_in_place(core::Tensor& t) {
  core::check(t.numel() == 0 || t.dtype() == core::DType::F32, "--fp16", "needs f32 frozen weights",
              "do not combine --fp16 with --bf16 or --q_lora");
  if (t.numel() == 0) return;
  std::vector<uint16_t> half(size_t(t.numel()));
  core::convert(t.raw(), core::DType::F32, half.data(), core::DType::F16, half.size());
  core::convert(half.data(), core::DType::F16, t.raw(), core::DType::F32, half.size());
}

void round_frozen_weights_to_fp16(LlamaWeights& w) {
  core::check(w.storage == core::DType::F32 && !w.nf4, "--fp16", "needs f32 frozen weights",
              "do not combine --fp16 with --bf16 or --q_lora");
  auto round = round_to_fp16_in_place;
  round(w.embed);  // the tied lm_head shares this memory
  for (auto& l : w.layers)
    for (auto& p : l.proj) {
      round(p.weight);
      p.fp16_inputs = true;
    }
  if (!w.config.tie_word_embeddings) round(w.lm_head.weight);
  w.lm_head.fp16_inputs = true;
}

io::TensorStore open_model_tensors(const std::string& model_dir, const io::HfConfig& c) {
  io::TensorStore store = io::TensorStore::open_model_dir(model_dir);
  // Refuse tensors we would otherwise silently ignore: they mean a model feature we do not implement.
  std::set<std::string> expected;
  for (const auto& [name, shape] : llama_tensor_shapes(c)) expected.insert(name);
  for (const auto& name : store.names()) {
    if (expected.count(name)) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;  // old checkpoints' buffers
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;      // tied: HF ignores it too
    throw core::Error(store.info(name).file, "unexpected tensor '" + name + "' for " + c.architecture,
                      "this tensor belongs to a feature zerolora does not support; check config.json matches "
                      "the weights");
  }
  return store;
}

LlamaWeights load_llama_weights(const std::string& model_dir, core::DType compute, core::DType storage, bool nf4) {
  const std::string config_path = (std::filesystem::path(model_dir) / "config.json").string();
  io::HfConfig c = io::load_hf_config(config_path);
  io::TensorStore store = open_model_tensors(model_dir, c);
  return build_llama_weights(c, compute, storage,
                             [&](const std::string& name, core::DType dtype, const core::Shape& shape) {
                               return store.load(name, dtype, shape);
                             },
                             nf4);
}

LayerWeights build_layer_weights(const io::HfConfig& c, int l, core::DType compute, core::DType storage,
                                 const TensorSource& source, bool nf4) {
  LayerWeights L;
  const std::string p = "model.layers." + std::to_string(l);
  L.input_norm = source(p + ".input_layernorm.weight", compute, {c.hidden_size});
  L.post_norm = source(p + ".post_attention_layernorm.weight", compute, {c.hidden_size});
  for (int j = 0; j < 7; ++j) {
    core::Shape ws = proj_weight_shape(c, Proj(j));
    core::Tensor bias;
    if (has_bias(c, Proj(j))) bias = source(layer_tensor(l, Proj(j), "bias"), compute, {ws[0]});
    if (nf4) {
      // quantised one projection at a time: the full-precision copy lives only for this loop turn
      core::Tensor dense = source(layer_tensor(l, Proj(j), "weight"), core::DType::F32, ws);
      auto q = std::make_shared<kernels::Nf4Weight>(kernels::nf4_quantize(dense.data<float>(), ws[0], ws[1]));
      q->compute_dtype = core::DType::BF16;
      if (bias.numel() > 0) q->bias.assign(bias.data<float>(), bias.data<float>() + bias.numel());
      L.proj[j] = kernels::FrozenWeight::make_nf4(std::move(q));
      continue;
    }
    core::Tensor weight = source(layer_tensor(l, Proj(j), "weight"), storage, ws);
    L.proj[j] = kernels::FrozenWeight::make(std::move(weight), std::move(bias));
  }
  return L;
}

LlamaWeights build_llama_weights(const io::HfConfig& c, core::DType compute, core::DType storage,
                                 const TensorSource& source, bool nf4) {
  core::check(!nf4 || compute == core::DType::F32, "model", "NF4 weights need F32 activations");
  core::check(compute == core::DType::F32 || compute == core::DType::F64, "model", "compute dtype must be F32/F64");
  core::check(storage == compute || (storage == core::DType::BF16 && compute == core::DType::F32), "model",
              "unsupported storage/compute dtype pair");
  LlamaWeights w;
  w.config = c;
  w.compute = compute;
  w.storage = storage;
  w.nf4 = nf4;
  w.embed = source("model.embed_tokens.weight", storage, {c.vocab_size, c.hidden_size});
  w.layers.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) w.layers[l] = build_layer_weights(c, l, compute, storage, source, nf4);
  w.final_norm = source("model.norm.weight", compute, {c.hidden_size});
  w.lm_head = c.tie_word_embeddings
                  ? kernels::FrozenWeight::make(w.embed)
                  : kernels::FrozenWeight::make(source("lm_head.weight", storage, {c.vocab_size, c.hidden_size}));
  return w;
}

}  // namespace zerolora::model

namespace zerolora::model {

LlamaWeights to_device(const LlamaWeights& w, const kernels::Context& ctx) {
  if (!ctx.on_cuda()) return w;
  core::check(w.compute == core::DType::F32, "--device cuda", "the CUDA backend runs float models only");
  LlamaWeights d;
  d.config = w.config;
  d.compute = w.compute, d.storage = w.storage, d.nf4 = w.nf4;
  // a ZeRO-3 skeleton has no embedding, blocks or lm_head (a stream brings them): only what it has goes up
  if (w.embed.numel()) d.embed = kernels::to_device(w.embed, ctx);
  d.layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    d.layers[l].input_norm = kernels::to_device(w.layers[l].input_norm, ctx);
    d.layers[l].post_norm = kernels::to_device(w.layers[l].post_norm, ctx);
    for (int p = 0; p < 7; ++p) d.layers[l].proj[p] = kernels::to_device(w.layers[l].proj[p], ctx);
  }
  d.final_norm = kernels::to_device(w.final_norm, ctx);
  if (w.config.tie_word_embeddings) {
    d.lm_head = kernels::FrozenWeight{};
    d.lm_head.weight = d.embed;  // shares the device embedding, as on the host
    d.lm_head.N = w.lm_head.N, d.lm_head.K = w.lm_head.K;
    d.lm_head.fp16_inputs = w.lm_head.fp16_inputs;
  } else if (w.lm_head.weight.numel() || w.lm_head.nf4) {
    d.lm_head = kernels::to_device(w.lm_head, ctx);
  }
  return d;
}

}  // namespace zerolora::model
