// Summing the LoRA gradients over ranks once per optimizer step, the way the ZeRO stage asks
// (deepspeed-peft-spec §2):
//   stage 0, 1   all_reduce of the whole flat gradient buffer after the backward pass
//   stage 2, 3   reduce-scatter in buckets of reduce_bucket_size elements, so each rank receives the sum
//                of its own shard only. Buckets are launched from the model's gradient-ready hook while
//                the last micro-batch's backward is still running (the buffer is in forward order and
//                backward finishes it from the end): with overlap_comm asynchronously, waited for at
//                finish(); without it each bucket is reduced, blocking, as soon as it is complete.
// Gradients accumulate locally over the micro-batches of a step and are communicated once, during
// the last one (DeepSpeed reduces at every micro-batch; the sum is the same, the traffic 1/accumulation).
#pragma once
#include <cstdint>
#include <vector>

#include "dist/comm.h"
#include "dist/zero_partition.h"
#include "model/lora.h"

namespace zerolora::train {

class GradientSync {
 public:
  GradientSync(dist::Comm& comm, int zero_stage, const model::LoraLayout& layout, const dist::FlatPartition& part,
               int64_t bucket_elements, bool overlap_comm);

  // Call before the backward pass of a step's last micro-batch; grads is the flat buffer it writes.
  void begin_last_micro_batch(float* grads);
  // The model's gradient-ready hook: grads[from, end) is final for this step.
  void gradients_final_from(int64_t from);
  // After that backward: launches what is left and waits. Afterwards grads[shard] holds the sum over
  // ranks (stages 2, 3: only this rank's shard is meaningful), or the whole buffer (stages 0, 1).
  void finish();

  size_t bucket_count() const { return buckets_.size(); }
  bool reduce_scatters() const { return scatter_; }

 private:
  void launch(size_t bucket);

  dist::Comm& comm_;
  bool scatter_ = false;
  bool overlap_ = false;
  dist::Range shard_;
  int64_t padded_ = 0;
  std::vector<dist::GradientBucket> buckets_;      // in launch order (end of the buffer first)
  std::vector<std::vector<int64_t>> counts_;       // per bucket: elements each rank owns
  std::vector<float> reduced_;                     // this rank's shard of the sum
  std::vector<dist::Request> inflight_;
  float* grads_ = nullptr;
  size_t next_ = 0;                                // next bucket to launch
};

}  // namespace zerolora::train
