#include "train/step.h"

#include "core/error.h"

namespace zerolora::train {

double micro_batch_grad_scale(const LossNormalisation& norm, int64_t micro_tokens) {
  if (micro_tokens <= 0) return 0.0;
  if (norm.token_weighted) {
    core::check(norm.window_tokens_all_ranks > 0, "train", "token-weighted loss needs the window's token count");
    return 1.0 / double(norm.window_tokens_all_ranks);
  }
  return 1.0 / (double(micro_tokens) * double(norm.accumulation_steps) * double(norm.world_size));
}

int64_t count_targets(const model::ModelInput& in) {
  int64_t n = 0;
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t t = 0; t + 1 < in.T; ++t) n += in.labels[b * in.T + t + 1] != -100;
  return n;
}

template <typename S>
MicroBatchLoss run_micro_batch(model::LlamaModel<S>& model, const model::ModelInput& input, const S* params,
                               S* grads, const LossNormalisation& norm, int64_t micro_tokens, uint64_t dropout_seed) {
  MicroBatchLoss out;
  if (micro_tokens <= 0) return out;
  const double scale = micro_batch_grad_scale(norm, micro_tokens);
  auto res = model.forward_backward(input, params, grads, scale * norm.loss_scale, dropout_seed);
  out.loss_sum = res.loss_sum;
  out.tokens = res.tokens;
  out.logged = res.loss_sum * scale;  // summed over micro-batches and ranks: the window's loss
  return out;
}

template MicroBatchLoss run_micro_batch<float>(model::LlamaModel<float>&, const model::ModelInput&, const float*,
                                               float*, const LossNormalisation&, int64_t, uint64_t);
template MicroBatchLoss run_micro_batch<double>(model::LlamaModel<double>&, const model::ModelInput&,
                                                const double*, double*, const LossNormalisation&, int64_t, uint64_t);

}  // namespace zerolora::train
