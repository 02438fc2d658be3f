// ZeRO partition plans: which rank owns which elements, as DeepSpeed cuts them
// (reference/deepspeed-peft-spec.md §2.2, §2.3). Pure arithmetic, no communication: the code that moves
// bytes (Comm) takes its ranges from here, and these are unit-tested on their own.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace zerolora::dist {

// Half-open element range [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
  bool operator==(const Range&) const = default;
};

// The piece of a parameter that one rank owns.
struct OwnedSlice {
  int rank = 0;
  Range flat;                       // in flat-buffer coordinates
  int64_t offset_in_param = 0;      // flat.begin - the parameter's offset
  int64_t offset_in_partition = 0;  // flat.begin - the rank's partition start
};

// Stages 1 and 2: all trainable params concatenated into one flat buffer of `numel` elements, padded at
// the end to a multiple of 2 x world (DeepSpeed's NCCL alignment), then cut into `world` equal
// contiguous slices: rank r owns [r*P, (r+1)*P), P = padded_numel / world. The padding is zeros and
// lives in the last rank(s)' slices.
class FlatPartition {
 public:
  FlatPartition(int64_t numel, int world);

  int world() const { return world_; }
  int64_t numel() const { return numel_; }
  int64_t padded_numel() const { return padded_numel_; }
  int64_t partition_size() const { return partition_size_; }

  // Rank r's slice, padding included (what reduce_scatter / all_gather move).
  Range rank_range(int rank) const;
  // Rank r's slice without the padding (what holds real params); may be empty.
  Range rank_real_range(int rank) const;
  int owner_of(int64_t index) const;  // index in [0, padded_numel)

  // The slices of the param stored at [offset, offset + length), in rank order; they tile it exactly.
  std::vector<OwnedSlice> owners_of(int64_t offset, int64_t length) const;

  // Elements of `range` owned by each rank (size world): the chunk counts for reducing the range with
  // Comm::reduce_scatter_sum_uneven, since owners' slices are contiguous and in rank order.
  std::vector<int64_t> counts_per_rank(Range range) const;

 private:
  int64_t numel_;
  int world_;
  int64_t padded_numel_;
  int64_t partition_size_;
};

// A gradient bucket: a contiguous range of the flat gradient buffer reduced by one collective.
struct GradientBucket {
  Range flat;
  // The bucket can be reduced once the gradient of this param (the lowest-index param it touches, the
  // last of its params to finish backward) is ready. -1 for a bucket holding only the tail padding.
  int64_t ready_after_param = -1;
};

// Buckets of at most bucket_elements, in the order gradients become ready: backward runs the layers in
// reverse, so the last params of the flat buffer (laid out in forward order) come first. Like
// DeepSpeed's ipg bucket, a bucket is closed at a param boundary when the next param would overflow it,
// so it can be launched without waiting for that param; a param larger than a bucket is split into
// pieces of at most bucket_elements. The tail padding [sum(param_numels), padded_numel) rides with the
// first bucket (or gets its own). The buckets tile [0, padded_numel) exactly.
std::vector<GradientBucket> plan_gradient_buckets(std::span<const int64_t> param_numels,
                                                  int64_t padded_numel, int64_t bucket_elements);

// Stage 3: every tensor is partitioned on its own. P = ceil(numel / world); rank r stores
// [r*P, min(numel, (r+1)*P)) in a P-element buffer padded with zeros, so all ranks' buffers have the
// same size and one all_gather of P elements per rank rebuilds the tensor (plus padding).
class TensorPartition {
 public:
  TensorPartition(int64_t numel, int world, bool persistent = false);

  int world() const { return world_; }
  int64_t numel() const { return numel_; }
  int64_t partition_size() const { return partition_size_; }
  int64_t padded_numel() const { return partition_size_ * world_; }
  // Persistent tensors stay gathered on every rank (never released after use).
  bool persistent() const { return persistent_; }

  Range rank_range(int rank) const;       // [r*P, (r+1)*P), padding included
  Range rank_real_range(int rank) const;  // clipped to numel; empty for ranks past the end

 private:
  int64_t numel_;
  int world_;
  int64_t partition_size_;
  bool persistent_;
};

// DeepSpeed's persistence rule (mark_persistent_parameters), in module parameter order: a tensor is
// persistent when numel <= param_threshold and the running total of persistent elements stays within
// model_threshold (a tensor that would exceed it is skipped, later smaller ones may still fit).
std::vector<TensorPartition> plan_stage3_partitions(std::span<const int64_t> numels, int world,
                                                    int64_t param_threshold,
                                                    int64_t model_threshold = INT64_MAX);

}  // namespace zerolora::dist
