// ZeRO stage 3 for the frozen base model (deepspeed-peft-spec §2.4): every rank keeps 1/world of each
// frozen tensor and the model gathers a part (the embedding, one block, the lm_head) just before it
// uses it, through model::FrozenWeightStream.
//
//  * Partition: each tensor's bytes in its storage form (bf16 / f32 / fp16-rounded f32, or a QLoRA
//    projection's NF4 arrays: packed codes, absmax codes, absmax2) are cut into `world` equal slices
//    (dist::TensorPartition rules, padded with zeros); rank r keeps slice r. Tensors DeepSpeed would
//    mark persistent (stage3_param_persistence_threshold / stage3_model_persistence_threshold, in
//    module order) stay whole on every rank. The final norm is always whole (every pass needs it).
//  * Loading: the model folder is read one block at a time and each tensor is cut right away, so a rank
//    never holds more than one full block plus its slices (mapped file pages are dropped as read).
//  * Gathering: one all_gather per tensor array into a working buffer: two block buffers (current and
//    next) and one vocabulary-sized buffer (embedding / lm_head). The next part of the pass is
//    prefetched (started before the current part computes) up to stage3_prefetch_bucket_size elements
//    and within stage3_max_live_parameters; a part still in its buffer is reused instead of gathered
//    again when the elements used in between are within stage3_max_reuse_distance (the last block at
//    the forward/backward turn, a tied embedding as the lm_head).
//  * Buffers are allocated once; nothing is allocated per pass.
//
// The trainable LoRA weights are not streamed: they are small (well under 1 % of the model) and every
// rank keeps a working copy, while their gradients and optimizer state are sharded as in stage 2.
#pragma once
#include <memory>
#include <string>

#include "dist/comm.h"
#include "model/weight_stream.h"
#include "model/weights.h"

namespace zerolora::train {

struct Zero3Options {
  core::DType storage = core::DType::F32;  // frozen matrices: F32 or BF16
  bool nf4 = false;                        // QLoRA projections
  bool fp16 = false;                       // round frozen matrices to IEEE half, fp16 GEMM inputs
  int64_t param_persistence_threshold = 100000;  // elements (DeepSpeed default 1e5)
  int64_t model_persistence_threshold = INT64_MAX;
  int64_t prefetch_bucket_size = 50000000;       // elements; 0 = no prefetch
  int64_t max_live_parameters = 1000000000;
  int64_t max_reuse_distance = 1000000000;
};

// The engine's own memory accounting of the frozen model on this rank.
struct Zero3Memory {
  int64_t full_model_bytes = 0;    // the whole frozen model in its storage form (what world 1 holds)
  int64_t sharded_bytes = 0;       // this rank's slices of the partitioned tensors
  int64_t persistent_bytes = 0;    // tensors kept whole (norms, small tensors under the thresholds)
  int64_t gather_buffer_bytes = 0; // the working buffers gathered parts land in
  int64_t resident_bytes() const { return sharded_bytes + persistent_bytes + gather_buffer_bytes; }
};

struct Zero3Traffic {
  int64_t gathers = 0;        // parts gathered (each one or more all_gathers)
  int64_t reuses = 0;         // parts served from a buffer without gathering
  int64_t prefetched = 0;     // parts whose gather started before they were acquired
  int64_t gathered_bytes = 0; // bytes of gathered tensors (all ranks' slices)
};

class Zero3FrozenWeights final : public model::FrozenWeightStream {
 public:
  // Reads model_dir (config.json + safetensors) and keeps this rank's slices. comm must outlive this.
  Zero3FrozenWeights(const std::string& model_dir, const Zero3Options& options, dist::Comm& comm);
  ~Zero3FrozenWeights() override;

  // What the model needs resident: config, dtypes and the final norm (layers, embedding and lm_head
  // are empty: they come from this stream).
  const model::LlamaWeights& skeleton() const;
  Zero3Memory memory() const;
  Zero3Traffic traffic() const;
  // Bytes one pass gathers when every part is gathered at each use (stage3_max_reuse_distance 0): the
  // blocks' sharded tensors (used in forward and backward) and the embedding / lm_head (forward only;
  // a tied embedding counts twice). Padded sizes: what the all_gathers move.
  struct PassBytes { int64_t blocks = 0, forward_only = 0; };
  PassBytes gathered_bytes_per_use() const;

  void begin_pass(bool with_backward) override;
  const core::Tensor& acquire_embedding() override;
  const model::LayerWeights& acquire_layer(int layer) override;
  const kernels::FrozenWeight& acquire_lm_head() override;
  void release() override;
  void end_pass() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerolora::train
