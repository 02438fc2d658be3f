// The training objective: the loss of one micro-batch and its gradient with respect to the flat LoRA
// parameters. The loop (trainer.cpp) owns the normalisation across micro-batches and ranks (step.h), the
// ZeRO engine the parameters and their gradient sum; an objective only computes. A new objective (preference
// pairs, distillation, ...) is a new implementation of this interface.
#pragma once
#include <cstdint>

#include "data/batching.h"
#include "model/llama.h"
#include "train/step.h"

namespace zerolora::train {

struct ObjectiveLoss {
  double loss_sum = 0;  // summed over the micro-batch's target tokens
  int64_t tokens = 0;   // target tokens the loss is summed over
};

class Objective {
 public:
  virtual ~Objective() = default;
  // forward + backward of one collated micro-batch: grads += grad_scale x d(loss_sum)/d(params). grads null:
  // forward only (evaluation). dropout_seed derives the LoRA dropout masks.
  virtual ObjectiveLoss forward_backward(const data::Batch& batch, const float* params, float* grads,
                                         double grad_scale, uint64_t dropout_seed) = 0;
};

// Supervised fine-tuning (FastChat's train_lora.py): token-level cross-entropy of the causal LM on the
// labelled (assistant) tokens. packing: the batch's rows hold several samples (kv_begin bounds attention).
class SupervisedFineTuning final : public Objective {
 public:
  SupervisedFineTuning(model::LlamaModel<float>& model, bool packing) : model_(model), packing_(packing) {}
  ObjectiveLoss forward_backward(const data::Batch& batch, const float* params, float* grads, double grad_scale,
                                 uint64_t dropout_seed) override;

 private:
  model::LlamaModel<float>& model_;
  bool packing_ = false;
};

// One micro-batch of a training window through an objective, with the loss normalisation HF uses
// (run_micro_batch in step.h for a model directly): a micro-batch with no target token contributes nothing.
MicroBatchLoss run_micro_batch(Objective& objective, const data::Batch& batch, const float* params, float* grads,
                               const LossNormalisation& norm, uint64_t dropout_seed);

}  // namespace zerolora::train
