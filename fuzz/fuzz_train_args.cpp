// The command line (train::parse_train_args): the input is split into arguments at newlines.
#include "fuzz_util.h"
#include "train/args.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> argv;
  std::string cur;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') argv.push_back(cur), cur.clear();
    else cur.push_back(char(data[i]));
  }
  argv.push_back(cur);
  ZL_FUZZ_BODY({ (void)zerolora::train::parse_train_args(argv); });
  return 0;
}
