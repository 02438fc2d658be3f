// FastChat conversation JSON / JSONL (data::parse_conversations).
#include "data/conversation.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ZL_FUZZ_BODY({ (void)zerolora::data::parse_conversations(fuzz_text(data, size), "data.json"); });
  return 0;
}
