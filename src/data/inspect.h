// What `zerolora data inspect` shows: a sample's text with the trained tokens highlighted, the
// JSONL record of a sample, and the totals of a data set.
#pragma once
#include <ostream>
#include <string>

#include "data/dataset.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::data {

// The sample's tokens as text. Trained tokens are shown in green (ansi) or between "[[" and "]]"
// (plain, e.g. when the output is not a terminal); special tokens appear as their text ("<s>").
std::string highlight_trained_text(const Sample& sample, const tokenizer::Tokenizer& tok, bool ansi);

// One JSON object per line: {"id", "row", "input_ids", "labels"}.
std::string sample_json_line(const Sample& sample);

struct InspectOptions {
  size_t show_samples = 3;  // printed with highlighting; all samples go to the JSONL output
  bool ansi = false;
};

// Tokenises every sample of ds (writing each as JSONL to jsonl_out when given) and prints the first
// samples and the totals to text_out.
void inspect_dataset(Dataset& ds, const tokenizer::Tokenizer& tok, const InspectOptions& opt, std::ostream& text_out,
                     std::ostream* jsonl_out);

}  // namespace zerolora::data
