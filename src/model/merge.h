// Merging a PEFT LoRA adapter into its base model (FastChat apply_lora.py = PEFT merge_and_unload):
//   W' = W + scale * B A      for every adapted projection, scale = alpha / r (rsLoRA: alpha / sqrt(r))
// The result is a plain Hugging Face model folder that loads without PEFT: sharded safetensors,
// config.json, generation_config.json and the base's tokenizer files.
//
// Unlike apply_lora.py (which merges into fp16 whatever the base is), the sum is formed in fp32 with a
// double-precision B A product and rounded once to the output dtype: the base's own per-tensor dtype,
// or the one the caller asks for.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"

namespace zerolora::kernels {
struct Context;
}

namespace zerolora::model {

struct MergeOptions {
  // Dtype of every floating tensor in the output (F32, BF16 or F16); empty keeps each tensor's stored
  // dtype. config.json's torch_dtype follows an override.
  std::optional<core::DType> dtype;
  size_t max_shard_bytes = 5'000'000'000;  // HF save_pretrained's default "5GB"
  bool overwrite = false;                  // replace a non-empty out_dir
  // Where the updates W += scale B A run (null: the CPU); the result is the same bits either way.
  const kernels::Context* context = nullptr;
};

struct MergeReport {
  int merged_modules = 0;     // adapted projections folded into the weights
  int64_t tensors = 0;        // tensors written
  int64_t bytes = 0;          // tensor bytes written
  int shards = 0;             // safetensors files written
  std::string torch_dtype;    // config.json's torch_dtype in the output
};

// Reads base_dir (config.json + safetensors) and adapter_dir (adapter_config.json +
// adapter_model.safetensors) and writes the merged model to out_dir. Everything is written into a
// hidden temp folder beside out_dir and renamed into place at the end, so a failure leaves no partial
// out_dir. Throws core::Error when the adapter does not fit the base (a module, a layer or a shape),
// when out_dir exists and is not empty (unless options.overwrite), or when out_dir is base_dir or
// adapter_dir.
MergeReport merge_adapter(const std::string& base_dir, const std::string& adapter_dir, const std::string& out_dir,
                          const MergeOptions& options = {});

// HF's size strings for --max_shard_size: "5GB" (10^9), "500MB", "10KB", "2GiB" (2^30), "64MiB", "1KiB",
// or a plain byte count. Throws core::Error naming the flag otherwise.
size_t parse_shard_size(const std::string& text);

// "f32" / "float32" -> F32, "bf16" / "bfloat16" -> BF16, "f16" / "float16" / "fp16" -> F16; throws
// core::Error naming flag otherwise.
core::DType parse_float_dtype(const std::string& text, const std::string& flag);

// HF's torch_dtype spelling of F32 / BF16 / F16 / F64 ("float32", ...).
std::string torch_dtype_name(core::DType dtype);

}  // namespace zerolora::model
