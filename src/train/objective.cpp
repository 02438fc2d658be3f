#include "train/objective.h"

namespace zerolora::train {

ObjectiveLoss SupervisedFineTuning::forward_backward(const data::Batch& b, const float* params, float* grads,
                                                     double grad_scale, uint64_t dropout_seed) {
  model::ModelInput in;
  in.B = b.B, in.T = b.T, in.input_ids = b.input_ids.data(), in.labels = b.labels.data();
  in.lengths = b.lengths.data(), in.positions = b.positions.data();
  if (packing_) in.kv_begin = b.kv_begin.data();
  const auto r = model_.forward_backward(in, params, grads, grad_scale, dropout_seed);
  return {r.loss_sum, r.tokens};
}

MicroBatchLoss run_micro_batch(Objective& objective, const data::Batch& batch, const float* params, float* grads,
                               const LossNormalisation& norm, uint64_t dropout_seed) {
  MicroBatchLoss out;
  if (batch.target_tokens <= 0) return out;
  const double scale = micro_batch_grad_scale(norm, batch.target_tokens);
  const ObjectiveLoss res = objective.forward_backward(batch, params, grads, scale * norm.loss_scale, dropout_seed);
  out.loss_sum = res.loss_sum;
  out.tokens = res.tokens;
  out.logged = res.loss_sum * scale;  // summed over micro-batches and ranks: the window's loss
  return out;
}

}  // namespace zerolora::train
