// merge: fold a PEFT LoRA adapter into its base model (FastChat apply_lora.py), writing an HF folder.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/runtime.h"
#include "model/merge.h"

namespace zerolora::cli {

int cmd_merge(int argc, char** argv) {
  CLI::App app{"Merge a LoRA adapter into its base model (W + scale * B A) and write a Hugging Face model folder"};
  std::string base, adapter, out, dtype, shard_size = "5GB";
  bool overwrite = false;
  int threads = 0;
  app.add_option("--base", base, "base model folder (config.json + safetensors)")->required();
  app.add_option("--adapter", adapter, "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
      ->required();
  app.add_option("--out", out, "folder to write the merged model to")->required();
  app.add_option("--dtype", dtype, "f32 | bf16 | f16 for every floating tensor (default: keep the base's dtypes)");
  app.add_option("--max_shard_size", shard_size, "largest safetensors file, e.g. 5GB, 500MB, 2GiB")
      ->capture_default_str();
  app.add_flag("--overwrite", overwrite, "replace --out if it exists and is not empty");
  app.add_option("--num_threads", threads, "threads (0 = all cores)");
  ZL_PARSE(app, argc, argv);
  core::set_num_threads(threads);
  model::MergeOptions options;
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
