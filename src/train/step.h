// One accumulation window of micro-batches: forward + backward of each, gradients summed into one flat
// buffer with the loss normalisation HF uses (fastchat-spec §2.6, deepspeed-peft-spec §3.4).
#pragma once
#include <cstdint>
#include <vector>

#include "model/llama.h"

namespace zerolora::train {

struct LossNormalisation {
  // false (default, HF < 4.46): every micro-batch's mean loss is divided by GA (and averaged over ranks),
  //   so micro-batches weigh the same whatever their token counts.
  // true (HF >= 4.46): summed token loss / all target tokens of the window on every rank = the
  //   gradient of one big batch.
  bool token_weighted = false;
  int64_t accumulation_steps = 1;
  int world_size = 1;
  int64_t window_tokens_all_ranks = 0;  // needed when token_weighted
  double loss_scale = 1.0;              // fp16: gradients carry this factor (the logged loss does not)
};

// The factor micro-batch loss_sum is multiplied by, so that summing gradients over micro-batches and
// ranks gives the normalised gradient.
double micro_batch_grad_scale(const LossNormalisation& norm, int64_t micro_tokens);

struct MicroBatchLoss {
  double loss_sum = 0;
  int64_t tokens = 0;
  // what this micro-batch adds to the logged loss (its share of the window's loss, on this rank)
  double logged = 0;
};

// forward+backward of one micro-batch with grads += d(scaled loss)/d(params). A micro-batch with no
// target token contributes nothing (HF would produce NaN).
template <typename S>
MicroBatchLoss run_micro_batch(model::LlamaModel<S>& model, const model::ModelInput& input, const S* params,
                               S* grads, const LossNormalisation& norm, int64_t micro_tokens, uint64_t dropout_seed);

// number of targets (labels[t+1] != -100 within each row) of a micro-batch
int64_t count_targets(const model::ModelInput& input);

}  // namespace zerolora::train
