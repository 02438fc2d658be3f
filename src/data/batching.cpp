#include "data/batching.h"

#include <algorithm>

#include "core/error.h"

namespace zerolora::data {

namespace {

size_t row_tokens(const std::vector<const Sample*>& row) {
  size_t n = 0;
  for (const Sample* s : row) n += s->input_ids.size();
  return n;
}

void check_fits(size_t tokens, int64_t model_max_length, const Sample& first) {
  core::check(static_cast<int64_t>(tokens) <= model_max_length,
              "sample " + first.id + " (row " + std::to_string(first.row) + ")",
              std::to_string(tokens) + " tokens do not fit model_max_length " + std::to_string(model_max_length),
              "build samples with the same --model_max_length as the batches");
}

// Fills the rows into a B x T batch; `packed` decides whether each sample's first label is dropped.
Batch assemble(const std::vector<std::vector<const Sample*>>& rows, Padding padding, int64_t model_max_length,
               int32_t pad_id, bool packed) {
  core::check(pad_id >= 0, "collate", "pad id " + std::to_string(pad_id) + " is not a token id",
              "pad with tokenizer::padding_id_or_fallback(tok) when the tokenizer has no pad token (Llama 3)");
  Batch b;
  b.B = static_cast<int64_t>(rows.size());
  size_t longest = 0;
  for (const auto& row : rows) {
    core::check(!row.empty(), "collate", "a batch row holds no sample", "pass at least one sample per row");
    const size_t n = row_tokens(row);
    check_fits(n, model_max_length, *row.front());
    longest = std::max(longest, n);
  }
  b.T = padding == Padding::MaxLength ? model_max_length : static_cast<int64_t>(longest);
  const size_t total = static_cast<size_t>(b.B * b.T);
  b.input_ids.assign(total, pad_id);
  b.labels.assign(total, kIgnoreIndex);
  b.positions.assign(total, 0);
  b.kv_begin.assign(total, 0);
  b.lengths.assign(rows.size(), 0);

  for (size_t r = 0; r < rows.size(); ++r) {
    const size_t base = r * static_cast<size_t>(b.T);
    size_t t = 0;
    for (const Sample* s : rows[r]) {
      const size_t begin = t;
      for (size_t k = 0; k < s->input_ids.size(); ++k, ++t) {
        b.input_ids[base + t] = s->input_ids[k];
        b.labels[base + t] = (packed && k == 0) ? kIgnoreIndex : s->labels[k];
        b.positions[base + t] = static_cast<int32_t>(k);
        b.kv_begin[base + t] = static_cast<int32_t>(begin);
      }
      b.samples += 1;
    }
    b.lengths[r] = static_cast<int32_t>(t);
    // Padding continues the positions of an ordinary row (HF uses arange(T)) and forms its own
    // attention block, so a padded position never reads a real token's keys in a packed row.
    const size_t valid = t;
    for (; t < static_cast<size_t>(b.T); ++t) {
      b.positions[base + t] = packed ? static_cast<int32_t>(t - valid) : static_cast<int32_t>(t);
      b.kv_begin[base + t] = packed ? static_cast<int32_t>(valid) : 0;
    }
    for (size_t k = 1; k < valid; ++k) b.target_tokens += b.labels[base + k] != kIgnoreIndex;
  }
  return b;
}

}  // namespace

Batch collate(const std::vector<const Sample*>& samples, Padding padding, int64_t model_max_length, int32_t pad_id) {
  std::vector<std::vector<const Sample*>> rows;
  rows.reserve(samples.size());
  for (const Sample* s : samples) rows.push_back({s});
  return assemble(rows, padding, model_max_length, pad_id, false);
}

Batch collate_packed(const std::vector<std::vector<const Sample*>>& rows, Padding padding, int64_t model_max_length,
                     int32_t pad_id) {
  return assemble(rows, padding, model_max_length, pad_id, true);
}

std::vector<std::vector<size_t>> plan_packing(const std::vector<size_t>& order,
                                              const std::function<size_t(size_t)>& length_of,
                                              int64_t model_max_length) {
  std::vector<std::vector<size_t>> rows;
  size_t used = 0;
  for (size_t index : order) {
    const size_t n = length_of(index);
    core::check(static_cast<int64_t>(n) <= model_max_length, "plan_packing",
                "sample " + std::to_string(index) + " has " + std::to_string(n) + " tokens, over model_max_length " +
                    std::to_string(model_max_length),
                "truncate samples to model_max_length before packing (Dataset does)");
    if (rows.empty() || static_cast<int64_t>(used + n) > model_max_length) {
      rows.emplace_back();
      used = 0;
    }
    rows.back().push_back(index);
    used += n;
  }
  return rows;
}

}  // namespace zerolora::data
