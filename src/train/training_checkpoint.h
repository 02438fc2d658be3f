// checkpoint-N/ folders, HF Trainer style, written atomically (temp folder, fsync, rename):
//   adapter_config.json + adapter_model.safetensors   the PEFT adapter (loads in PEFT as it is)
//   optimizer.safetensors                              fp32 AdamW moments (exp_avg, exp_avg_sq), unsharded
//   scheduler.json                                     LR schedule (type, base lr, total, warmup, step)
//   optimizer.pt + scheduler.pt                        the same state as torch.optim.AdamW / LambdaLR
//                                                      state_dict()s, so that HF Trainer resumes from it
//   trainer_state.json + zerolora_state.json           HF TrainerState (HF's keys only) + our extras
//   training_args.json                                 the command line and resolved settings
//   tokenizer files                                    copied from the model folder, as HF does
// An HF Trainer checkpoint-N/ (PEFT adapter, optimizer.pt, scheduler.pt, trainer_state.json, rng_state.pth,
// training_args.bin; written without DeepSpeed) is read too: the moments come from optimizer.pt, the schedule
// position from scheduler.pt. rng_state.pth is not read: our dropout masks and data order derive from
// (seed, step, micro-batch, rank), so there is no generator state to restore, and HF resumes ours without one
// (it logs that it found no RNG file). training_args.bin (a pickled TrainingArguments) is not read either.
// Nothing in it depends on the number of ranks that wrote it: the optimizer state is gathered before
// it is written, so a run saved with 4 ranks resumes with any other count. The trainable weights are
// fp32 (the adapter file is the master copy), so no separate fp32 master file is needed.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/torch_pickle.h"
#include "model/lora.h"
#include "train/optimizer.h"
#include "train/trainer_state.h"

namespace zerolora::train {

struct TrainingSnapshot {
  std::vector<float> params;                // layout.numel()
  std::vector<float> exp_avg, exp_avg_sq;   // layout.numel()
  int64_t optimizer_steps = 0;              // AdamW's step counter (bias correction)
  TrainerState state;
  nlohmann::json scheduler = nlohmann::json::object();
  nlohmann::json args = nlohmann::json::object();
  // AdamW's hyper-parameters: written into optimizer.pt's param_groups (HF's optimizer takes them from
  // there on resume); read back from an HF checkpoint's optimizer.pt.
  AdamWConfig adamw;
  bool from_hf_trainer = false;  // read from an HF Trainer folder (optimizer.pt, no optimizer.safetensors)
};

// torch.optim.AdamW.state_dict() as HF Trainer's optimizer holds it for a PEFT model: parameter i of
// group 0 is the i-th trainable tensor of PEFT's named_parameters() (layout order: slot by slot, lora_A
// then lora_B), state {i: {step (f32 scalar tensor), exp_avg, exp_avg_sq (the parameter's shape)}};
// param_groups = [{all of them, weight_decay}, {none, weight_decay 0}] (HF's decay / no-decay split: LoRA
// weights all decay). lr = the rate of the next step, initial_lr = base_lr.
io::PtValue adamw_state_dict(const TrainingSnapshot& snapshot, const model::LoraLayout& layout, double lr,
                             double base_lr);
// The reverse into snapshot->exp_avg/exp_avg_sq/optimizer_steps/adamw; a parameter count, shape or step
// that does not fit the layout is a core::Error naming `where`.
void read_adamw_state_dict(const io::PtValue& state_dict, const model::LoraLayout& layout, const std::string& where,
                           TrainingSnapshot* snapshot);
// torch.optim.lr_scheduler.LambdaLR.state_dict() after `last_epoch` steps (HF's schedules are LambdaLRs),
// one entry per HF param group (2).
io::PtValue lambda_lr_state_dict(int64_t last_epoch, double base_lr, double last_lr);

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
