// config.json validation (io::parse_hf_config).
#include "fuzz_util.h"
#include "io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fuzz_text(data, size));  // load_hf_config wraps this step
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  ZL_FUZZ_BODY({
    auto c = zerolora::io::parse_hf_config(j, "config.json");
    (void)zerolora::io::hf_config_to_json(c);
  });
  return 0;
}
