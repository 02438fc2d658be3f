// The training run: what FastChat's train_lora.py + HF Trainer + DeepSpeed do, in one loop.
//   load model (frozen, f32 or bf16) + tokenizer + data  ->  LoRA layout, params (PEFT init, or
//   --lora_weight_path), AdamW  ->  resume from checkpoint-N if any  ->  per step: GA micro-batches
//   forward+backward, gradients reduced over ranks as the ZeRO stage says, clip, AdamW on this rank's
//   shard, all-gather, LR schedule, log, evaluate, save  ->  final adapter in output_dir.
#pragma once
#include <string>

#include "dist/comm.h"
#include "train/args.h"
#include "train/stop_signals.h"

namespace zerolora::train {

struct TrainResult {
  int64_t global_step = 0;
  double train_loss = 0;        // mean step loss over the whole run, the steps before a resume included
  double last_eval_loss = -1;   // -1 when no evaluation ran
  bool interrupted = false;     // stopped by SIGTERM/SIGINT (train/stop_signals.h) after saving a checkpoint
};

// Runs the whole job; throws core::Error for anything a user can fix.
TrainResult run_training(TrainArgs args, dist::Comm& comm);

// Evaluation only: the loss of args.eval_data_path (or data_path) under the base model plus an optional
// adapter folder: HF's eval_loss (the mean of the batches' mean losses, weighted by batch size), or with
// --eval_token_weighted_loss True the mean over all tokens. Returns the loss; prints loss and perplexity on rank 0.
double run_evaluation(const TrainArgs& args, const std::string& adapter_dir, dist::Comm& comm);

}  // namespace zerolora::train
