// The frozen base model: LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM weights, loaded once
// from an HF folder and converted to the layout and dtype the kernels run fastest on (DESIGN decision 2).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/lora.h"

namespace zerolora::model {

struct LayerWeights {
  core::Tensor input_norm, post_norm;  // [C], compute dtype
  kernels::FrozenWeight proj[7];       // indexed by Proj: q k v o gate up down
};

struct LlamaWeights {
  io::HfConfig config;
  core::DType compute = core::DType::F32;  // activations: F32 (engine) or F64 (gradient checks)
  core::DType storage = core::DType::F32;  // big frozen matrices: F32, F64 or BF16
  bool nf4 = false;                        // QLoRA: the 7 projections are NF4 (embedding/lm_head stay `storage`)
  core::Tensor embed;                      // [V, C], storage dtype
  std::vector<LayerWeights> layers;
  core::Tensor final_norm;                 // [C], compute dtype
  kernels::FrozenWeight lm_head;           // [V, C]; shares embed's memory when tied
  int64_t parameter_count() const;         // as HF counts it (tied embedding once)
  int64_t frozen_bytes() const;            // resident bytes of all frozen tensors
};

// compute must be F32 or F64; storage F32/F64 (= compute) or BF16 (with compute F32).
// nf4: QLoRA — the seven projections of every layer are quantised to NF4 with double quantisation
// (bitsandbytes' format) at load, and multiplied in bf16 (bnb_4bit_compute_dtype bfloat16); embeddings,
// lm_head and norms keep `storage` / `compute`, as bitsandbytes + PEFT keep them.
LlamaWeights load_llama_weights(const std::string& model_dir, core::DType compute, core::DType storage,
                                bool nf4 = false);

// The model folder's tensors, checked to hold nothing this config does not explain (an unexpected tensor
// means a feature zerolora does not implement: core::Error naming it).
io::TensorStore open_model_tensors(const std::string& model_dir, const io::HfConfig& config);

// Where build_llama_weights gets each tensor: (HF name, wanted dtype, expected shape) -> tensor.
using TensorSource = std::function<core::Tensor(const std::string&, core::DType, const core::Shape&)>;
LlamaWeights build_llama_weights(const io::HfConfig& config, core::DType compute, core::DType storage,
                                 const TensorSource& source, bool nf4 = false);

// One block's weights (as build_llama_weights makes them), for loaders that stream the model block by block.
LayerWeights build_layer_weights(const io::HfConfig& config, int layer, core::DType compute, core::DType storage,
                                 const TensorSource& source, bool nf4 = false);

// An F32 tensor's values rounded to the nearest IEEE half, in place (what --fp16 does to frozen weights).
void round_to_fp16_in_place(core::Tensor& t);

// --fp16: rounds every frozen matrix (embedding, projections, lm_head) to IEEE-half values in place and
// makes the projections and lm_head round their input activations to half as well: fp16 GEMM inputs
// with fp32 accumulation and fp32 activations in between. Needs F32 storage.
void round_frozen_weights_to_fp16(LlamaWeights& weights);

// The weights' copy in ctx's memory (the same weights on the host context): what a LlamaModel on a CUDA
// context runs on. NF4 projections stay NF4 (dequantised on the device per GEMM).
LlamaWeights to_device(const LlamaWeights& w, const kernels::Context& ctx);

// HF tensor names of a model (in file order), with their shapes — shared by the loader, the random
// model writer and merge.
std::vector<std::pair<std::string, core::Shape>> llama_tensor_shapes(const io::HfConfig& c);

}  // namespace zerolora::model
