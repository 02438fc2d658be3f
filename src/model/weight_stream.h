// Frozen weights that are not all resident: ZeRO-3 keeps 1/world of every frozen tensor on each rank and
// gathers a part (the embedding, one block, the lm_head) just before the model uses it, then frees it.
//
// The model drives a stream through one pass in a fixed order, so an implementation knows what comes
// next and can start fetching it while the current part computes:
//   begin_pass(with_backward)
//   embedding                          (acquire_embedding, release)
//   block 0 .. L-1                     (acquire_layer(l), release)
//   lm_head                            (acquire_lm_head, release)
//   with_backward: block L-1 .. 0      (acquire_layer(l), release: a block is gathered again for its
//                                       backward, and its checkpointed forward is recomputed inside)
//   end_pass()
// Exactly one part is acquired at a time; what acquire returns stays valid until release().
// The non-layer frozen state that every pass needs whole (config, final norm) stays in LlamaWeights.
#pragma once
#include "kernels/kernels.h"
#include "model/weights.h"

namespace zerolora::model {

class FrozenWeightStream {
 public:
  virtual ~FrozenWeightStream() = default;
  virtual void begin_pass(bool with_backward) = 0;
  virtual const core::Tensor& acquire_embedding() = 0;
  virtual const LayerWeights& acquire_layer(int layer) = 0;
  virtual const kernels::FrozenWeight& acquire_lm_head() = 0;
  virtual void release() = 0;
  virtual void end_pass() = 0;
};

}  // namespace zerolora::model
