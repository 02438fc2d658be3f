// Byte-level BPE tokenizer.json loading (tokenizer::BpeTokenizer), then a short encode/decode.
#include "fuzz_util.h"
#include "tokenizer/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ZL_FUZZ_BODY({
    zerolora::tokenizer::BpeTokenizer tok(fuzz_text(data, size), "tokenizer.json");
    auto ids = tok.encode("Hello world! 123 <|im_start|>", true);
    (void)tok.decode(ids, true);
  });
  return 0;
}
