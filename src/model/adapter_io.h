// PEFT adapter folders: adapter_config.json + adapter_model.safetensors (deepspeed-peft-spec §4.1).
// Keys: base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r]; embed_tokens:
// base_model.model.model.embed_tokens.lora_embedding_A [r, V] and .lora_embedding_B [C, r]; --lora_bias all:
// every bias (".base_layer.bias" on adapted projections, ".bias" elsewhere). PEFT also writes the frozen
// lm_head / embed_tokens matrix of an adapted lm_head / embed_tokens (".base_layer.weight"); zerolora does not
// write that copy (PEFT loads adapters without it), and on load accepts it when it equals the base model's.
// (This lives in model rather than io because the names come from the model's module tree.)
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "model/lora.h"

namespace zerolora::model {

// adapter_config.json content as PEFT writes it (sorted keys, inference_mode true). Only long-standing
// keys are written so older PEFT versions load it too (use_rslora only when true).
nlohmann::json peft_adapter_config(const LoraConfig& lora, const std::string& base_model_name_or_path);

// The README.md model card PEFT's save_pretrained writes beside the adapter: YAML front matter with
// base_model and library_name: peft (what the Hub and PEFT read), then a short body.
std::string peft_model_card(const std::string& base_model_name_or_path);

// Writes both files into dir (created if needed), each atomically (temp file + fsync + rename), and the
// README.md model card unless dir has a README.md that zerolora did not write (PEFT would edit a user's
// card; it is left as it is here).
// dtype: F32 (default, as PEFT up-casts adapters), BF16 or F16.
void save_peft_adapter(const std::string& dir, const LoraLayout& layout, const float* params,
                       const std::string& base_model_name_or_path, core::DType dtype = core::DType::F32);

// Reads the LoRA settings of an adapter folder (r, lora_alpha, lora_dropout, target_modules, use_rslora,
// bias); throws core::Error on a missing/invalid adapter_config.json, a non-LORA peft_type, or a setting that
// would change what the adapter computes and is not implemented (per-module rank_pattern/alpha_pattern, DoRA,
// fan_in_fan_out, layers_to_transform, pattern target_modules). target_modules is a set: PEFT writes it in no
// fixed order, and the layout orders the slots itself.
LoraConfig read_peft_adapter_config(const std::string& dir);

// Loads adapter tensors into params (layout.numel() floats). Every slot of the layout must be present
// with the right shape; extra LoRA tensors (a target the layout lacks) are an error naming them. Bias
// slots the file does not hold (--lora_bias lora_only) keep params' values. PEFT's ".base_layer.weight"
// copies are checked against layout.model_dir()'s tensors (core::Error when they differ).
void load_peft_adapter(const std::string& dir, const LoraLayout& layout, float* params);
// An adapter folder read for a model: its layout (from adapter_config.json) and its flat parameters.
// An empty dir gives an empty adapter (layout null): the base model alone. Bias slots start from the base
// model's biases (config.path's folder), then take the file's.
struct LoadedAdapter {
  std::unique_ptr<LoraLayout> layout;
  std::vector<float> params;
  const float* data() const { return layout ? params.data() : nullptr; }
};
LoadedAdapter load_adapter_for_model(const io::HfConfig& config, const std::string& dir);

// The same from one safetensors file holding PEFT-named adapter tensors.
void load_adapter_tensors(const std::string& safetensors_path, const LoraLayout& layout, float* params);

}  // namespace zerolora::model
