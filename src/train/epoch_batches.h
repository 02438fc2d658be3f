// Which samples form each micro-batch of an epoch on one rank (HF DistributedSampler + DataLoader
// semantics), and turning one of them into a collated batch.
#pragma once
#include <cstdint>
#include <vector>

#include "data/batching.h"
#include "data/dataset.h"

namespace zerolora::train {

// A micro-batch: rows of sample indices (one sample per row unless packing).
using MicroBatchPlan = std::vector<std::vector<size_t>>;

struct EpochBatchOptions {
  int world = 1, rank = 0;
  uint64_t seed = 42;
  int64_t per_device_batch_size = 1;
  bool shuffle = true;
  bool packing = false;
  int64_t model_max_length = 512;
};

// Without packing: the rank's DistributedSampler indices cut into micro-batches of per_device_batch_size
// (the last may be short). With packing: samples of the whole shuffled epoch are greedily packed into
// rows of at most model_max_length tokens, and the rows are distributed to ranks as samples would be.
std::vector<MicroBatchPlan> epoch_micro_batches(data::Dataset& dataset, int64_t epoch, const EpochBatchOptions& opt);

// Number of rows an epoch has before distribution (samples, or packed rows).
int64_t epoch_rows(data::Dataset& dataset, int64_t epoch, const EpochBatchOptions& opt);

data::Batch collate_micro_batch(data::Dataset& dataset, const MicroBatchPlan& plan, data::Padding padding,
                                int64_t model_max_length, int32_t pad_id, bool packing);

}  // namespace zerolora::train
