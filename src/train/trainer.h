// The training run: what FastChat's train_lora.py + HF Trainer + DeepSpeed do, in one loop.
//   load model (frozen, f32 or bf16) + tokenizer + data  ->  LoRA layout, params (PEFT init, or
//   --lora_weight_path), AdamW  ->  resume from checkpoint-N if any  ->  per step: GA micro-batches
//   forward+backward, gradients reduced over ranks as the ZeRO stage says, clip, AdamW on this rank's
//   shard, all-gather, LR schedule, log, evaluate, save  ->  final adapter in output_dir.
#pragma once
#include <string>

#include "dist/comm.h"
#include "train/args.h"

namespace zerolora::train {

struct TrainResult {
  int64_t global_step = 0;
  double train_loss = 0;        // mean of the logged losses of this run
  double last_eval_loss = -1;   // -1 when no evaluation ran
  bool interrupted = false;     // stopped by SIGTERM/SIGINT after saving a checkpoint
};

// Runs the whole job; throws core::Error for anything a user can fix.
TrainResult run_training(TrainArgs args, dist::Comm& comm);

// Evaluation only: the loss of args.eval_data_path (or data_path) under the base model plus an optional
// adapter folder: HF's eval_loss (the mean of the batches' mean losses, weighted by batch size), or with
// --eval_token_weighted_loss True the mean over all tokens. Returns the loss; prints loss and perplexity on rank 0.
double run_evaluation(const TrainArgs& args, const std::string& adapter_dir, dist::Comm& comm);

// Installs SIGTERM/SIGINT handlers: the first signal asks the loop to save and stop at the next step
// boundary; a second one exits at once (nothing half-written survives: every save is atomic).
void install_stop_signal_handlers();
// Blocks SIGTERM/SIGINT in the calling thread (and the threads it starts later) and leaves one idle thread to
// receive them; run_training calls it first.
void route_stop_signals_away_from_compute_threads();
bool stop_requested();

}  // namespace zerolora::train
