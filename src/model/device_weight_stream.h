// Frozen weights streamed to the model's device part by part: ZeRO stage 3 (and DeepSpeed's offload_param) with
// --device cuda. An upstream FrozenWeightStream on the host hands out each part (the embedding, one block, the
// lm_head) as host tensors — ZeRO-3's slices gathered over the ranks, or with one rank the whole model held in
// host memory; this stream copies the part into one of two device slots and hands the model device views of it,
// so at most two parts are resident on the device whatever the model's size.
//
// Order and lifetime: the copy into a slot is enqueued on the context's stream, after the work that used the
// slot's previous part (the part before the one just released), so no event is needed; the copy has read the
// host part when copy_to_device returns (kernels/context.h), so the upstream part is released at once.
// The copies are not overlapped with compute in this version (they run on the compute stream).
//
// With a CPU context the slots are host memory and the copies memcpy: the same code runs the CPU tests.
#pragma once
#include <memory>

#include "kernels/context.h"
#include "model/weight_stream.h"

namespace zerolora::model {

class DeviceWeightStream final : public FrozenWeightStream {
 public:
  // upstream and ctx must outlive this. NF4 parts are refused (one line) when first acquired.
  DeviceWeightStream(FrozenWeightStream& upstream, const kernels::Context& ctx);
  ~DeviceWeightStream() override;

  void begin_pass(bool with_backward) override;
  const core::Tensor& acquire_embedding() override;
  const LayerWeights& acquire_layer(int layer) override;
  const kernels::FrozenWeight& acquire_lm_head() override;
  void release() override;
  void end_pass() override;

  // Bytes of the two device slots (the most device memory the frozen weights take at once), and bytes copied.
  int64_t slot_bytes() const;
  int64_t copied_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerolora::model
