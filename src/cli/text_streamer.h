// Streams the text of a growing list of generated ids to stdout (generate, chat).
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

// Prints the text of a growing id sequence as it grows. Decoding all ids each time (not token by token)
// keeps SentencePiece's word-initial spaces and multi-byte characters right; a character still split
// across tokens shows as U+FFFD at the end of the text and is held back until it completes.
class TextStreamer {
 public:
  explicit TextStreamer(const tokenizer::Tokenizer& tok) : tok_(tok) {}
  void push(int32_t id) { ids_.push_back(id); }
  void flush(bool final) {
    const std::string text = tok_.decode(ids_, true);
    static const std::string kReplacement = "\xEF\xBF\xBD";
    const bool incomplete = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
    if ((incomplete && !final) || text.size() <= printed_) return;
    std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
    std::fflush(stdout);
    printed_ = text.size();
  }

 private:
  const tokenizer::Tokenizer& tok_;
  std::vector<int32_t> ids_;
  size_t printed_ = 0;
};


}  // namespace zerolora::cli
