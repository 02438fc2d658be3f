// checkpoint-N/ folders, HF Trainer style, written atomically (temp folder, fsync, rename):
//   adapter_config.json + adapter_model.safetensors   the PEFT adapter (loads in PEFT as it is)
//   optimizer.safetensors                              fp32 AdamW moments (exp_avg, exp_avg_sq), unsharded
//   scheduler.json                                     LR schedule (type, base lr, total, warmup, step)
//   trainer_state.json + zerolora_state.json           HF TrainerState (HF's keys only) + our extras
//   training_args.json                                 the command line and resolved settings
//   tokenizer files                                    copied from the model folder, as HF does
// Nothing in it depends on the number of ranks that wrote it: the optimizer state is gathered before
// it is written, so a run saved with 4 ranks resumes with any other count. The trainable weights are
// fp32 (the adapter file is the master copy), so no separate fp32 master file is needed.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/lora.h"
#include "train/trainer_state.h"

namespace zerolora::train {

struct TrainingSnapshot {
  std::vector<float> params;                // layout.numel()
  std::vector<float> exp_avg, exp_avg_sq;   // layout.numel()
  int64_t optimizer_steps = 0;              // AdamW's step counter (bias correction)
  TrainerState state;
  nlohmann::json scheduler = nlohmann::json::object();
  nlohmann::json args = nlohmann::json::object();
};

// Writes dir (e.g. output_dir/checkpoint-12) atomically. model_dir: where tokenizer files are copied from.
void save_training_checkpoint(const std::string& dir, const TrainingSnapshot& snapshot, const model::LoraLayout& layout,
                              const std::string& model_dir);

// Reads everything back; any missing or inconsistent file is a core::Error naming it.
TrainingSnapshot load_training_checkpoint(const std::string& dir, const model::LoraLayout& layout);

// Copies the tokenizer files present in model_dir into dir, as HF Trainer's tokenizer.save_pretrained leaves
// them after FastChat's pad_token = unk_token: tokenizer_config.json and special_tokens_map.json get
// "pad_token" = the unk token (special_tokens_map.json is created from the config's bos/eos/unk when the
// model folder has none). Without an unk token, or with unreadable JSON, the files are copied unchanged.
void copy_tokenizer_files(const std::string& model_dir, const std::string& dir);

}  // namespace zerolora::train
