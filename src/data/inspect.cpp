#include "data/inspect.h"

#include <nlohmann/json.hpp>

#include "tokenizer/unicode.h"

namespace zerolora::data {

namespace {

const char* const kAnsiTrained = "\x1b[1;32m";
const char* const kAnsiReset = "\x1b[0m";

}  // namespace

std::string highlight_trained_text(const Sample& sample, const tokenizer::Tokenizer& tok, bool ansi) {
  std::string out, run;
  bool run_trained = false;
  auto flush = [&] {
    if (run.empty()) return;
    const std::string text = tokenizer::make_valid_utf8(run);
    if (run_trained) out += ansi ? std::string(kAnsiTrained) + text + kAnsiReset : "[[" + text + "]]";
    else out += text;
    run.clear();
  };
  for (size_t t = 0; t < sample.input_ids.size(); ++t) {
    const bool trained = sample.labels[t] != kIgnoreIndex;
    if (trained != run_trained) {
      flush();
      run_trained = trained;
    }
    run += tok.token_bytes(sample.input_ids[t]);
  }
  flush();
  return out;
}

std::string sample_json_line(const Sample& sample) {
  nlohmann::json j;
  j["id"] = sample.id;
  j["row"] = sample.row;
  j["input_ids"] = sample.input_ids;
  j["labels"] = sample.labels;
  return j.dump();
}

void inspect_dataset(Dataset& ds, const tokenizer::Tokenizer& tok, const InspectOptions& opt, std::ostream& text_out,
                     std::ostream* jsonl_out) {
  text_out << "tokenizer: " << tok.describe() << "\n";
  text_out << "template: " << template_name(ds.style()) << ", model_max_length " << ds.options().model_max_length
           << "\n";
  for (size_t i = 0; i < ds.size(); ++i) {
    const Sample& s = ds.get(i);
    if (jsonl_out) *jsonl_out << sample_json_line(s) << "\n";
    if (i < opt.show_samples) {
      int64_t trained = 0;
      for (int32_t l : s.labels) trained += l != kIgnoreIndex;
      text_out << "\n--- row " << s.row << (s.id.empty() ? "" : " (id \"" + s.id + "\")") << ": "
               << s.input_ids.size() << " tokens, " << trained << " trained\n";
      text_out << highlight_trained_text(s, tok, opt.ansi) << "\n";
    }
  }
  text_out << "\n" << ds.report().summary(ds.source());
}

}  // namespace zerolora::data
