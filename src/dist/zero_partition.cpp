#include "dist/zero_partition.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace zerolora::dist {

namespace {

void check_world(const char* where, int world) {
  core::check(world >= 1, where, "world size " + std::to_string(world) + " is not positive");
}

void check_rank(const char* where, int rank, int world) {
  core::check(rank >= 0 && rank < world, where,
              "rank " + std::to_string(rank) + " is outside 0.." + std::to_string(world - 1));
}

Range intersect(Range a, Range b) {
  Range r{std::max(a.begin, b.begin), std::min(a.end, b.end)};
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

}  // namespace

FlatPartition::FlatPartition(int64_t numel, int world) : numel_(numel), world_(world) {
  check_world("dist::FlatPartition", world);
  core::check(numel >= 0, "dist::FlatPartition", "negative element count " + std::to_string(numel));
  const int64_t alignment = 2 * int64_t(world);
  padded_numel_ = (numel + alignment - 1) / alignment * alignment;
  partition_size_ = padded_numel_ / world;
}

Range FlatPartition::rank_range(int rank) const {
  check_rank("dist::FlatPartition::rank_range", rank, world_);
  return {rank * partition_size_, (rank + 1) * partition_size_};
}

Range FlatPartition::rank_real_range(int rank) const {
  return intersect(rank_range(rank), {0, numel_});
}

int FlatPartition::owner_of(int64_t index) const {
  core::check(index >= 0 && index < padded_numel_, "dist::FlatPartition::owner_of",
              "index " + std::to_string(index) + " is outside the padded buffer of " +
                  std::to_string(padded_numel_));
  return int(index / partition_size_);
}

std::vector<OwnedSlice> FlatPartition::owners_of(int64_t offset, int64_t length) const {
  core::check(offset >= 0 && length >= 0 && offset + length <= padded_numel_,
              "dist::FlatPartition::owners_of",
              "param [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                  ") is outside the padded buffer of " + std::to_string(padded_numel_));
  std::vector<OwnedSlice> slices;
  if (length == 0) return slices;
  const Range param{offset, offset + length};
  for (int r = owner_of(offset); r <= owner_of(offset + length - 1); ++r) {
    Range part = rank_range(r);
    Range piece = intersect(param, part);
    slices.push_back({r, piece, piece.begin - offset, piece.begin - part.begin});
  }
  return slices;
}

std::vector<int64_t> FlatPartition::counts_per_rank(Range range) const {
  core::check(range.begin >= 0 && range.begin <= range.end && range.end <= padded_numel_,
              "dist::FlatPartition::counts_per_rank",
              "range [" + std::to_string(range.begin) + ", " + std::to_string(range.end) +
                  ") is outside the padded buffer of " + std::to_string(padded_numel_));
  std::vector<int64_t> counts(world_);
  for (int r = 0; r < world_; ++r) counts[r] = intersect(range, rank_range(r)).size();
  return counts;
}

std::vector<GradientBucket> plan_gradient_buckets(std::span<const int64_t> param_numels,
                                                  int64_t padded_numel, int64_t bucket_elements) {
  const char* where = "dist::plan_gradient_buckets";
  core::check(bucket_elements > 0, where,
              "bucket size " + std::to_string(bucket_elements) + " is not positive",
              "set reduce_bucket_size to a positive number of elements");
  int64_t numel = 0;
  for (int64_t n : param_numels) {
    core::check(n >= 0, where, "negative param size " + std::to_string(n));
    numel += n;
  }
  core::check(padded_numel >= numel, where,
              "padded size " + std::to_string(padded_numel) + " is smaller than the params' " +
                  std::to_string(numel));

  std::vector<GradientBucket> buckets;
  // The bucket being filled grows downwards from `open.end`, as gradients arrive last param first.
  GradientBucket open{{padded_numel, padded_numel}, -1};
  auto close_open_bucket = [&] {
    if (!open.flat.empty()) buckets.push_back(open);
    open = {{open.flat.begin, open.flat.begin}, -1};
  };
  auto add_piece = [&](int64_t size, int64_t param) {
    if (open.flat.size() + size > bucket_elements) close_open_bucket();
    open.flat.begin -= size;
    if (param >= 0) open.ready_after_param = param;
  };

  // Tail padding first: it is "ready" from the start and needs reducing like everything else.
  for (int64_t left = padded_numel - numel; left > 0;) {
    int64_t piece = std::min(left, bucket_elements);
    add_piece(piece, -1);
    left -= piece;
  }
  for (int64_t p = int64_t(param_numels.size()) - 1; p >= 0; --p) {
    int64_t n = param_numels[p];
    if (n == 0) continue;
    if (n <= bucket_elements) {
      add_piece(n, p);
      continue;
    }
    // Larger than a bucket: full pieces from its end down, the remainder last.
    close_open_bucket();
    for (int64_t left = n; left > 0;) {
      int64_t piece = std::min(left, bucket_elements);
      add_piece(piece, p);
      left -= piece;
    }
  }
  close_open_bucket();
  return buckets;
}

TensorPartition::TensorPartition(int64_t numel, int world, bool persistent)
    : numel_(numel), world_(world), persistent_(persistent) {
  check_world("dist::TensorPartition", world);
  core::check(numel >= 0, "dist::TensorPartition", "negative element count " + std::to_string(numel));
  partition_size_ = (numel + world - 1) / world;
}

Range TensorPartition::rank_range(int rank) const {
  check_rank("dist::TensorPartition::rank_range", rank, world_);
  return {rank * partition_size_, (rank + 1) * partition_size_};
}

Range TensorPartition::rank_real_range(int rank) const {
  return intersect(rank_range(rank), {0, numel_});
}

std::vector<TensorPartition> plan_stage3_partitions(std::span<const int64_t> numels, int world,
                                                    int64_t param_threshold,
                                                    int64_t model_threshold) {
  std::vector<TensorPartition> plan;
  plan.reserve(numels.size());
  int64_t persistent_total = 0;
  for (int64_t n : numels) {
    bool persistent = n <= param_threshold && n <= model_threshold - persistent_total;
    if (persistent) persistent_total += n;
    plan.emplace_back(n, world, persistent);
  }
  return plan;
}

}  // namespace zerolora::dist
