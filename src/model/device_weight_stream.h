// Frozen weights streamed to the model's device part by part: ZeRO stage 3 (and DeepSpeed's offload_param) with
// --device cuda. An upstream FrozenWeightStream on the host hands out each part (the embedding, one block, the
// lm_head) as host tensors — ZeRO-3's slices gathered over the ranks, or with one rank the whole model held in
// host memory; this stream copies the part into one of two device slots and hands the model device views of it,
// so at most two parts are resident on the device whatever the model's size.
//
// Overlap: the model's order of parts is fixed (weight_stream.h), so while the model computes with one part the
// next one is already on its way: the host copies it from the upstream part into the other slot's page-locked
// buffer and a second queue (kernels::CopyQueue) copies that to the device once the compute stream is done with
// the slot's previous part; the compute stream waits for a part's copy only when the model acquires it. A part
// that was not predicted (another order) is loaded the same way on demand. The upstream part is released as soon
// as it is in the page-locked buffer, so upstream holds one part at a time, as it requires.
//
// With a CPU context the slots and buffers are host memory and the copies memcpy: the same code runs the CPU tests.
#pragma once
#include <memory>

#include "kernels/context.h"
#include "model/weight_stream.h"
#include "model/weights.h"

namespace zerolora::model {

class DeviceWeightStream final : public FrozenWeightStream {
 public:
  // upstream and ctx must outlive this; num_layers: the model's blocks (the order of a pass). NF4 parts are
  // refused (one line) when first acquired.
  DeviceWeightStream(FrozenWeightStream& upstream, int num_layers, const kernels::Context& ctx);
  ~DeviceWeightStream() override;

  void begin_pass(bool with_backward) override;
  const core::Tensor& acquire_embedding() override;
  const LayerWeights& acquire_layer(int layer) override;
  const kernels::FrozenWeight& acquire_lm_head() override;
  void release() override;
  void end_pass() override;

  // Bytes of the two device slots (the most device memory the frozen weights take at once), bytes copied, and
  // how many parts were loaded ahead of their use / on demand.
  int64_t slot_bytes() const;
  int64_t copied_bytes() const;
  int64_t prefetched_parts() const;
  int64_t loaded_on_demand() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The parts of a LlamaWeights held whole in host memory, handed out in the model's order: the upstream of a
// DeviceWeightStream for DeepSpeed's offload_param on one rank without ZeRO-3's slicing (the benchmark's
// --offload-param). skeleton() is what the model needs resident (config, final norm).
class HostWeightStream final : public FrozenWeightStream {
 public:
  explicit HostWeightStream(const LlamaWeights& weights);  // must outlive this
  const LlamaWeights& skeleton() const { return skeleton_; }
  void begin_pass(bool) override {}
  const core::Tensor& acquire_embedding() override { return w_.embed; }
  const LayerWeights& acquire_layer(int layer) override { return w_.layers.at(size_t(layer)); }
  const kernels::FrozenWeight& acquire_lm_head() override { return w_.lm_head; }
  void release() override {}
  void end_pass() override {}

 private:
  const LlamaWeights& w_;
  LlamaWeights skeleton_;
};

}  // namespace zerolora::model
