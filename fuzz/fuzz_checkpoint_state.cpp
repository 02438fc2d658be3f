// Checkpoint metadata: trainer_state.json (train::trainer_state_from_json) and the loss scaler state.
#include "fuzz_util.h"
#include "train/loss_scaler.h"
#include "train/trainer_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ZL_FUZZ_BODY({
    auto j = nlohmann::json::parse(fuzz_text(data, size));
    auto s = zerolora::train::trainer_state_from_json(j, "trainer_state.json");
    (void)zerolora::train::trainer_state_to_json(s);
    (void)zerolora::train::DynamicLossScaler::from_json(j, "scheduler.json");
  });
  return 0;
}
