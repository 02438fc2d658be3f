// merge: fold a PEFT LoRA adapter into its base model (FastChat apply_lora.py), writing an HF folder.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "kernels/context.h"
#include "model/generate.h"
#include "model/merge.h"

namespace zerolora::cli {

int cmd_merge(int argc, char** argv) {
  std::string base, adapter, out, dtype, shard_size = "5GB";
  bool overwrite = false;
  int64_t threads = 0;
  train::FlagSet fs("zerolora merge",
                    "usage: zerolora merge --model_name_or_path DIR --adapter DIR --out DIR [flags]\n"
                    "Merge a LoRA adapter into its base model (W + scale * B A) and write a Hugging Face model "
                    "folder.");
  fs.add(train::model_name_or_path_flag(base).with_help("base model folder (config.json + safetensors)"))
      .with_deprecated_alias("base");
  fs.add(train::adapter_flag(adapter).with_help(
             "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")).mark_required("./adapter");
  fs.add(train::string_flag("out", out, "DIR", "folder to write the merged model to")).mark_required("./merged");
  fs.add(train::string_flag("dtype", dtype, "{f32,bf16,f16}",
                            "dtype of every floating tensor (default: keep the base's dtypes)"))
      .with_default_shown("");
  fs.add(train::string_flag("max_shard_size", shard_size, "SIZE", "largest safetensors file, e.g. 5GB, 500MB, 2GiB"));
  fs.add(train::bool_flag("overwrite", overwrite, "replace --out if it exists and is not empty"));
  add_threads_flag(fs, threads);
  std::string device = "auto";
  add_device_flag(fs, device, "the merge (W + scale B A per module)");
  if (!parse_flags(fs, argc, argv)) return 0;
  core::set_num_threads(int(threads));
  std::string device_line;
  const std::unique_ptr<kernels::CudaContext> gpu = model::open_generation_device(device, &device_line);
  std::printf("merge on %s\n", device_line.c_str());
  model::MergeOptions options;
  if (gpu) options.context = &gpu->ctx();
  if (!dtype.empty()) options.dtype = model::parse_float_dtype(dtype, "--dtype");
  options.max_shard_bytes = model::parse_shard_size(shard_size);
  options.overwrite = overwrite;
  core::Timer timer;
  const model::MergeReport r = model::merge_adapter(base, adapter, out, options);
  std::printf("merged %d LoRA modules into %s: %lld tensors, %.2f MB in %d safetensors file%s, torch_dtype %s "
              "(%.1f s)\n",
              r.merged_modules, out.c_str(), (long long)r.tensors, double(r.bytes) / 1e6, r.shards,
              r.shards == 1 ? "" : "s", r.torch_dtype.empty() ? "(unset)" : r.torch_dtype.c_str(), timer.seconds());
  return 0;
}

}  // namespace zerolora::cli
