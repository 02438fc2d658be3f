// `zerolora train` arguments: FastChat train_lora.py's flags, with its names, value syntax and defaults.
//
// FastChat parses ModelArguments + DataArguments + TrainingArguments (an HF subclass) + LoraArguments with one
// HfArgumentParser (reference/fastchat-spec.md §1.1–1.5). A FastChat command line pasted after `zerolora train`
// parses to the same values:
//   --flag value | --flag=value        bools: True/False, yes/no, true/false, 1/0 (also t/f/y/n); a bare
//                                       --flag means True; lists take space-separated values
//                                       (--lora_target_modules q_proj v_proj); --local_rank=N is accepted;
//                                       dashes in a flag name work like underscores (--learning-rate).
// The parser is the one every command uses (train/flags.h); the train flags are one table in args.cpp.
// Defaults are HF TrainingArguments' (transformers 4.3x) unless FastChat overrides them (optim adamw_torch,
// model_max_length 512). Flags marked "ours" are zerolora additions.
#pragma once
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "train/flags.h"

namespace zerolora::train {

enum class LrSchedulerType { Constant, ConstantWithWarmup, Linear, Cosine };
enum class IntervalStrategy { No, Steps, Epoch };  // HF IntervalStrategy for logging/saving/evaluation
enum class LoraBias { None, All, LoraOnly };        // PEFT LoraConfig.bias
enum class PaddingMode { MaxLength, Longest };
// --device: auto = cuda when the build has the CUDA backend and a GPU is visible, else cpu
enum class DeviceChoice { Auto, Cpu, Cuda };      // FastChat always pads to model_max_length

// How to resume. FastChat ignores --resume_from_checkpoint and resumes whenever output_dir holds anything
// named checkpoint-* (Auto). We honour an explicit value.
enum class ResumeMode {
  Auto,    // not given: FastChat's rule (resume from the highest checkpoint-<step> if checkpoint-* exists)
  Latest,  // True: resume from the highest checkpoint-<step>; none is an error (HF)
  Never,   // False: start fresh even if checkpoints exist
  Path,    // a folder: resume from it
};

struct TrainArgs {
  // --- model
  std::string model_name_or_path;  // required: HF model folder (local; nothing is downloaded)
  bool trust_remote_code = false;  // accepted; meaningless here (see notes)
  std::string padding_side = "right";

  // --- data
  std::string data_path;       // required
  std::string eval_data_path;  // "" = no eval set
  bool lazy_preprocess = false;
  int64_t model_max_length = 512;
  std::string conv_template = "vicuna_v1.1";  // ours
  bool packing = false;                       // ours
  PaddingMode padding = PaddingMode::MaxLength;  // ours
  bool strict_data = false;                   // ours: refuse rows FastChat would silently drop

  // --- LoRA
  int64_t lora_r = 8;
  int64_t lora_alpha = 16;
  double lora_dropout = 0.05;
  std::vector<std::string> lora_target_modules = {"q_proj", "v_proj"};
  std::string lora_weight_path;  // FastChat never reads it; we start from it (r, alpha, rslora, targets from it)
  LoraBias lora_bias = LoraBias::None;
  bool q_lora = false;
  bool use_rslora = false;  // ours: scaling alpha/sqrt(r)

  // --- training
  std::string output_dir;  // required
  bool overwrite_output_dir = false;  // accepted; as in FastChat it does not stop the automatic resume
  double num_train_epochs = 3.0;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  int64_t per_device_train_batch_size = 8;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 5e-5;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // 0 = no clipping; ignored under --deepspeed without gradient_clipping
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;  // > 0 overrides warmup_ratio
  LrSchedulerType lr_scheduler_type = LrSchedulerType::Linear;
  std::string optim = "adamw_torch";  // adamw_torch | adamw_hf | adamw_torch_fused: the same AdamW here
  int64_t seed = 42;
  bool gradient_checkpointing = false;
  bool continue_on_save_error = false;  // ours: a failed checkpoint save (disk full) is reported, training goes on
  bool token_weighted_loss = false;  // ours: false = HF<4.46 (micro-batch mean / GA), true = token mean
  bool eval_token_weighted_loss = false;  // ours: false = HF's eval_loss (mean of batch means), true = token mean
  ResumeMode resume_mode = ResumeMode::Auto;
  std::string resume_from_checkpoint;  // the folder when resume_mode == Path

  // --- precision / distributed
  bool bf16 = false;
  bool fp16 = false;
  std::optional<bool> tf32;  // accepted; no effect on the CPU build
  bool flash_attn = false;   // accepted; our attention is always the tiled, padding-aware kind
  std::string deepspeed;     // path of a DeepSpeed JSON config, "" = none
  int64_t local_rank = -1;   // accepted from the deepspeed launcher; ranks come from MPI
  int64_t num_threads = 0;   // ours: 0 = core::default_num_threads()
  DeviceChoice device = DeviceChoice::Auto;  // ours
  int64_t dataloader_num_workers = 0;  // accepted; preprocessing runs in-process
  std::string cache_dir;     // accepted; unused (no downloads)

  // --- logging / saving / evaluation (HF: *_steps < 1 is a ratio of the total steps)
  IntervalStrategy logging_strategy = IntervalStrategy::Steps;
  double logging_steps = 500;
  bool logging_first_step = false;
  IntervalStrategy save_strategy = IntervalStrategy::Steps;
  double save_steps = 500;
  std::optional<int64_t> save_total_limit;  // none = keep all
  IntervalStrategy evaluation_strategy = IntervalStrategy::No;
  std::optional<double> eval_steps;  // after parsing: set whenever evaluation_strategy is Steps
  std::vector<std::string> report_to = {"none"};
  std::string logging_dir;  // TensorBoard folder; "" = <output_dir>/runs/<date>_<host> when the run starts
  std::string metrics_file;  // ours: JSON lines; after parsing "" became <output_dir>/metrics.jsonl

  // Flags given that change nothing here, each with why; the trainer prints them once on rank 0.
  std::vector<std::string> notes;
};

// Parses the arguments after `zerolora train` and validates them; every problem is a FlagError (a core::Error)
// naming the flag, the problem and the fix (unknown flag with a did-you-mean, missing or bad value, out of
// range, contradictions such as --bf16 with --fp16, a missing required flag). With --lora_weight_path it reads
// the adapter's adapter_config.json (adopt_adapter_lora_config).
TrainArgs parse_train_args(const std::vector<std::string>& argv);

// --lora_weight_path: the adapter decides r, lora_alpha, use_rslora, target_modules (matched as sets: PEFT
// writes them in no fixed order) and bias (--lora_bias). A flag in `given` (set on the command line) that disagrees is a FlagError
// naming both values; the others take the adapter's, with a note saying which changed. run_training uses the
// TrainArgs it is given: code that builds TrainArgs with a lora_weight_path calls this first (as parse does).
void adopt_adapter_lora_config(TrainArgs& args, const std::set<std::string>& given);

// Adds the train flags named in `names` (in the train table's order, with its help and groups) bound to args:
// the commands that take some train flags (eval) declare them from the one table.
void add_train_flags(FlagSet& flags, TrainArgs& args, const std::set<std::string>& names);

// zerolora eval's checks: --model_name_or_path, an eval file (--eval_data_path, else --data_path, copied into
// eval_data_path) and the ranges of the flags eval takes.
void validate_eval_args(TrainArgs& args);

// `zerolora train --help`: every flag grouped (model, data, LoRA, training, precision/distributed,
// logging/saving, zerolora extras) with its default and a one-line meaning.
std::string train_args_help();

// Checks the cross-flag rules (required flags, ranges, contradictions) and fills derived values (eval_steps,
// metrics_file). parse_train_args calls it; call it again after changing a TrainArgs in code.
void validate_train_args(TrainArgs& args);

// Names as they appear on the command line and in logs ("cosine", "steps", "lora_only", ...).
std::string to_string(LrSchedulerType type);
std::string to_string(IntervalStrategy strategy);
std::string to_string(LoraBias bias);

// The projections LoRA may target in a LLaMA-family model (PEFT matches these as name suffixes).
const std::vector<std::string>& lora_target_module_names();

}  // namespace zerolora::train
