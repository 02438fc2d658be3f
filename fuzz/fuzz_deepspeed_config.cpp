// DeepSpeed JSON (train::parse_deepspeed_config) and its "auto" resolution against default flags.
#include "fuzz_util.h"
#include "train/args.h"
#include "train/deepspeed_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ZL_FUZZ_BODY({
    auto cfg = zerolora::train::parse_deepspeed_config(fuzz_text(data, size), "ds.json");
    zerolora::train::TrainArgs args;
    args.model_name_or_path = "m", args.data_path = "d", args.output_dir = "o";
    (void)zerolora::train::resolve_deepspeed_config(cfg, args, 2, 64);
  });
  return 0;
}
