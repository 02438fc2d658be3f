#include "data/dataset.h"

#include <exception>
#include <sstream>

#include "core/error.h"

namespace zerolora::data {

std::string MaskingReport::summary(const std::string& source, size_t max_listed) const {
  std::ostringstream out;
  out << source << ": " << samples_total << " samples";
  if (samples_processed != samples_total) out << " (" << samples_processed << " tokenised so far)";
  out << ", " << tokens << " tokens, " << trained_tokens << " trained";
  if (truncated) out << ", " << truncated << " truncated at model_max_length";
  out << "\n";
  if (entries.empty()) {
    out << "  every sample trains (no masked-out sample)\n";
    return out.str();
  }
  out << "  " << masked_out << " sample" << (masked_out == 1 ? "" : "s") << " masked out entirely";
  for (const auto& [issue, count] : by_issue) out << "; " << issue_name(issue) << ": " << count;
  out << "\n";
  for (size_t k = 0; k < entries.size() && k < max_listed; ++k) {
    const MaskedSample& e = entries[k];
    out << "  row " << e.row;
    if (!e.id.empty()) out << " (id \"" << e.id << "\")";
    out << ": " << issue_name(e.issue) << (e.whole_sample ? " (whole sample masked)" : "") << ": " << e.detail
        << "\n";
  }
  if (entries.size() > max_listed) out << "  ... and " << entries.size() - max_listed << " more\n";
  return out.str();
}

std::string MaskingReport::masked_out_by_reason() const {
  std::map<SampleIssue, size_t> whole;  // each sample once, by its first reason (its entries are consecutive)
  const MaskedSample* last = nullptr;
  for (const MaskedSample& e : entries) {
    if (e.whole_sample && !(last && last->row == e.row)) whole[e.issue] += 1;
    if (e.whole_sample) last = &e;
  }
  size_t named = 0;
  std::string text;
  for (const auto& [issue, count] : whole) {
    text += (text.empty() ? "" : ", ") + std::to_string(count) + " " + issue_name(issue);
    named += count;
  }
  // every whole-sample mask records its reason; a sample could still end up with no label another way
  if (masked_out > named) text += (text.empty() ? "" : ", ") + std::to_string(masked_out - named) + " other";
  return text;
}

Dataset Dataset::load(const std::string& path, const tokenizer::Tokenizer& tok, const DataOptions& opt) {
  return from_conversations(read_conversations(path), path, tok, opt);
}

Dataset Dataset::from_conversations(std::vector<Conversation> conversations, const std::string& source,
                                    const tokenizer::Tokenizer& tok, const DataOptions& opt) {
  core::check(opt.model_max_length > 0, "--model_max_length", "must be positive, got " +
              std::to_string(opt.model_max_length), "pass e.g. --model_max_length 2048");
  Dataset ds;
  ds.tok_ = &tok;
  ds.options_ = opt;
  ds.style_ = find_template(opt.conv_template);
  ds.source_ = source;
  ds.conversations_ = std::move(conversations);
  ds.samples_.resize(ds.conversations_.size());
  ds.report_.samples_total = ds.conversations_.size();
  if (opt.lazy) return ds;

  // Eager: rows are independent, so they are tokenised in parallel; the report is then filled in row
  // order so that it (and a strict-mode error) does not depend on the thread count.
  const auto n = static_cast<int64_t>(ds.conversations_.size());
  std::vector<PreprocessResult> results(ds.conversations_.size());
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 32)
  for (int64_t i = 0; i < n; ++i) {
    try {
      results[i] = preprocess_conversation(ds.conversations_[i], ds.style_, tok, opt.model_max_length);
    } catch (...) {
#pragma omp critical
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  for (size_t i = 0; i < results.size(); ++i) {
    ds.record(i, results[i]);
    ds.samples_[i] = ds.make_sample(i, results[i]);
    results[i] = PreprocessResult();
  }
  return ds;
}

Sample Dataset::make_sample(size_t i, const PreprocessResult& r) const {
  const Conversation& conv = conversations_[i];
  return Sample{conv.id, conv.row, r.input_ids, r.labels};
}

void Dataset::record(size_t i, const PreprocessResult& r) {
  const Conversation& conv = conversations_[i];
  const int64_t trained = r.trained_tokens();
  report_.samples_processed += 1;
  report_.tokens += static_cast<int64_t>(r.input_ids.size());
  report_.trained_tokens += trained;
  if (r.truncated) report_.truncated += 1;
  if (trained == 0) report_.masked_out += 1;
  for (const SampleProblem& p : r.problems) {
    report_.by_issue[p.issue] += 1;
    report_.entries.push_back({conv.row, conv.id, p.issue, p.detail, trained == 0});
  }
  if (options_.strict && !r.problems.empty()) {
    const SampleProblem& p = r.problems.front();
    throw core::Error(row_location(source_, conv.row, conv.id),
                      std::string(issue_name(p.issue)) + (trained == 0 ? " (whole sample masked)" : "") + ": " +
                          p.detail,
                      "fix or remove this row, or turn strict data checking off to skip and report such rows");
  }
}

const Sample& Dataset::get(size_t i) {
  core::check(i < samples_.size(), source_, "sample index " + std::to_string(i) + " is out of range (" +
              std::to_string(samples_.size()) + " samples)");
  std::lock_guard<std::mutex> lock(*mutex_);
  if (!samples_[i]) {
    PreprocessResult r = preprocess_conversation(conversations_[i], style_, *tok_, options_.model_max_length);
    record(i, r);
    samples_[i] = make_sample(i, r);
  }
  return *samples_[i];
}

}  // namespace zerolora::data
