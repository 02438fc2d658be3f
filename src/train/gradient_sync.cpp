#include "train/gradient_sync.h"

#include <algorithm>

#include "core/error.h"
#include "core/op_profile.h"

namespace zerolora::train {

GradientSync::GradientSync(dist::Comm& comm, int zero_stage, const model::LoraLayout& layout,
                           const dist::FlatPartition& part, int64_t bucket_elements, bool overlap_comm)
    : comm_(comm), scatter_(zero_stage >= 2 && comm.size() > 1), overlap_(overlap_comm),
      shard_(part.rank_range(comm.rank())), padded_(part.padded_numel()) {
  if (!scatter_) return;
  // the flat buffer's params in order (A then B per slot, then the --lora_bias slots; contiguous)
  std::vector<int64_t> numels;
  int64_t expect = 0;
  for (const auto& [offset, shape] : layout.flat_tensors()) {
    core::check(offset == expect, "GradientSync", "LoRA buffer is not contiguous", "internal error");
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    numels.push_back(n);
    expect = offset + n;
  }
  buckets_ = dist::plan_gradient_buckets(numels, part.padded_numel(), std::max<int64_t>(bucket_elements, 1));
  std::stable_sort(buckets_.begin(), buckets_.end(),
                   [](const dist::GradientBucket& a, const dist::GradientBucket& b) { return a.flat.begin > b.flat.begin; });
  for (const auto& b : buckets_) counts_.push_back(part.counts_per_rank(b.flat));
  reduced_.assign(size_t(shard_.size()), 0.f);
}

void GradientSync::begin_last_micro_batch(float* grads) {
  grads_ = grads;
  next_ = 0;
  inflight_.clear();
}

void GradientSync::launch(size_t i) {
  const dist::Range r = buckets_[i].flat;
  const int64_t own_begin = std::max(r.begin, shard_.begin);
  const int64_t mine = counts_[i][size_t(comm_.rank())];
  float* out = reduced_.data() + (mine > 0 ? own_begin - shard_.begin : 0);
  dist::Request req = comm_.reduce_scatter_sum_uneven_async(
      std::span<const float>(grads_ + r.begin, size_t(r.size())), std::span<float>(out, size_t(mine)), counts_[i]);
  if (overlap_) {
    inflight_.push_back(std::move(req));
  } else {
    core::OpTimer t(core::Op::Communication);
    req.wait();
  }
}

void GradientSync::gradients_final_from(int64_t from) {
  if (!scatter_ || !grads_) return;
  while (next_ < buckets_.size() && buckets_[next_].flat.begin >= from) launch(next_++);
  for (auto& r : inflight_) r.test();  // drive progress of what is already in flight
}

void GradientSync::finish() {
  if (comm_.size() == 1) return;
  core::OpTimer t(core::Op::Communication);
  if (!scatter_) {
    // stages 0 and 1: every rank needs the whole sum (stage 1 updates its shard from it)
    comm_.all_reduce_sum(std::span<float>(grads_, size_t(padded_)));
    grads_ = nullptr;
    return;
  }
  while (next_ < buckets_.size()) launch(next_++);
  for (auto& r : inflight_) r.wait();
  inflight_.clear();
  std::copy(reduced_.begin(), reduced_.end(), grads_ + shard_.begin);
  grads_ = nullptr;
}

}  // namespace zerolora::train
