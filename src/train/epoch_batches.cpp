#include "train/epoch_batches.h"

#include "data/sampler.h"

namespace zerolora::train {

namespace {

std::vector<std::vector<size_t>> packed_rows(data::Dataset& dataset, int64_t epoch, const EpochBatchOptions& opt) {
  std::vector<size_t> order = opt.shuffle ? data::shuffled_order(dataset.size(), opt.seed, epoch)
                                          : std::vector<size_t>();
  if (!opt.shuffle)
    for (size_t i = 0; i < dataset.size(); ++i) order.push_back(i);
  return data::plan_packing(
      order, [&](size_t i) { return dataset.get(i).input_ids.size(); }, opt.model_max_length);
}

}  // namespace

int64_t epoch_rows(data::Dataset& dataset, int64_t epoch, const EpochBatchOptions& opt) {
  return opt.packing ? int64_t(packed_rows(dataset, epoch, opt).size()) : int64_t(dataset.size());
}

std::vector<MicroBatchPlan> epoch_micro_batches(data::Dataset& dataset, int64_t epoch, const EpochBatchOptions& opt) {
  std::vector<std::vector<size_t>> rows;
  if (opt.packing) {
    auto all = packed_rows(dataset, epoch, opt);
    // rows play the part of samples for the distributed sampler (already shuffled: no second shuffle)
    for (size_t i : data::epoch_indices(all.size(), opt.world, opt.rank, opt.seed, epoch, false))
      rows.push_back(all[i]);
  } else {
    for (size_t i : data::epoch_indices(dataset.size(), opt.world, opt.rank, opt.seed, epoch, opt.shuffle))
      rows.push_back({i});
  }
  std::vector<MicroBatchPlan> out;
  for (size_t i = 0; i < rows.size(); i += size_t(opt.per_device_batch_size)) {
    MicroBatchPlan mb;
    for (size_t j = i; j < std::min(rows.size(), i + size_t(opt.per_device_batch_size)); ++j) mb.push_back(rows[j]);
    out.push_back(std::move(mb));
  }
  return out;
}

data::Batch collate_micro_batch(data::Dataset& dataset, const MicroBatchPlan& plan, data::Padding padding,
                                int64_t model_max_length, int32_t pad_id, bool packing) {
  if (packing) {
    std::vector<std::vector<const data::Sample*>> rows;
    for (const auto& row : plan) {
      rows.emplace_back();
      for (size_t i : row) rows.back().push_back(&dataset.get(i));
    }
    return data::collate_packed(rows, padding, model_max_length, pad_id);
  }
  std::vector<const data::Sample*> samples;
  for (const auto& row : plan) samples.push_back(&dataset.get(row.at(0)));
  return data::collate(samples, padding, model_max_length, pad_id);
}

}  // namespace zerolora::train
