// A training or evaluation data set: the conversations of one file, tokenised and masked with one
// template, eagerly at load (FastChat SupervisedDataset, in parallel) or on first use
// (--lazy_preprocess, FastChat LazySupervisedDataset, cached). Every sample that loses training signal
// is counted with its row, id and reason in a MaskingReport; with strict=true such a sample is an error.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "data/conversation.h"
#include "data/masking.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::data {

struct Sample {
  std::string id;
  size_t row = 0;
  std::vector<int32_t> input_ids;  // at most model_max_length, not padded
  std::vector<int32_t> labels;     // aligned with input_ids (HF convention, not shifted); -100 = ignored
};

struct DataOptions {
  std::string conv_template = "vicuna_v1.1";
  int64_t model_max_length = 512;
  bool lazy = false;    // tokenise on first use
  bool strict = false;  // a sample that loses training signal is an error instead of a report entry
};

struct MaskedSample {
  size_t row = 0;
  std::string id;
  SampleIssue issue;
  std::string detail;
  bool whole_sample = false;  // no token of the sample is trained
};

struct MaskingReport {
  size_t samples_total = 0;     // rows in the file
  size_t samples_processed = 0; // tokenised so far (all of them unless lazy)
  size_t masked_out = 0;        // samples with no trained token
  size_t truncated = 0;
  int64_t tokens = 0;
  int64_t trained_tokens = 0;
  std::map<SampleIssue, size_t> by_issue;
  std::vector<MaskedSample> entries;  // in row order (lazy: in the order samples were first used)

  // Multi-line text for start-up logs: totals, counts by reason, then up to max_listed entries.
  std::string summary(const std::string& source, size_t max_listed = 20) const;
  // The samples processed so far that train no token, counted by reason ("3 truncated before the first
  // answer, 1 ends with a user message"), for the error that stops a run with nothing to train.
  std::string masked_out_by_reason() const;
};

class Dataset {
 public:
  // Reads, validates and (unless opt.lazy) tokenises path. The tokenizer must outlive the Dataset.
  static Dataset load(const std::string& path, const tokenizer::Tokenizer& tok, const DataOptions& opt);
  static Dataset from_conversations(std::vector<Conversation> conversations, const std::string& source,
                                    const tokenizer::Tokenizer& tok, const DataOptions& opt);

  size_t size() const { return conversations_.size(); }
  // The sample of row i (lazy: tokenised now if not yet, then cached). Safe to call from several threads.
  const Sample& get(size_t i);
  const MaskingReport& report() const { return report_; }
  const Conversation& conversation(size_t i) const { return conversations_.at(i); }
  const std::string& source() const { return source_; }
  const DataOptions& options() const { return options_; }
  TemplateStyle style() const { return style_; }

 private:
  Dataset() = default;
  Sample make_sample(size_t i, const PreprocessResult& r) const;
  // Adds one processed sample to the report; throws in strict mode when it lost training signal.
  void record(size_t i, const PreprocessResult& r);

  const tokenizer::Tokenizer* tok_ = nullptr;
  DataOptions options_;
  TemplateStyle style_ = TemplateStyle::VicunaV11;
  std::string source_;
  std::vector<Conversation> conversations_;
  std::vector<std::optional<Sample>> samples_;
  MaskingReport report_;
  std::unique_ptr<std::mutex> mutex_ = std::make_unique<std::mutex>();
};

}  // namespace zerolora::data
