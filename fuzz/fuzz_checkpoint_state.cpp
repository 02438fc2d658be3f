// Checkpoint metadata: trainer_state.json (train::trainer_state_from_json) and the loss scaler state.
#include "fuzz_util.h"
#include "train/loss_scaler.h"
#include "train/trainer_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fuzz_text(data, size));  // the file reader wraps this step (tested there)
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  ZL_FUZZ_BODY({
    auto s = zerolora::train::trainer_state_from_json(j, "trainer_state.json");
    (void)zerolora::train::trainer_state_to_json(s);
    (void)zerolora::train::DynamicLossScaler::from_json(j, "scheduler.json");
  });
  return 0;
}
