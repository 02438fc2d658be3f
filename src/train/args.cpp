#include "train/args.h"
#include "train/tensorboard.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>

#include "core/error.h"
#include "model/adapter_io.h"

namespace zerolora::train {

using Error = FlagError;  // every problem found here is a command-line problem

namespace {

// ---------------------------------------------------------------------------------------------
// The train flag table: each flag declared once with its group, help and default (shown from the TrainArgs it
// is bound to, which starts as TrainArgs{}).

const char* const kModel = "model";
const char* const kData = "data";
const char* const kLora = "LoRA";
const char* const kTraining = "training";
const char* const kPrecision = "precision / distributed";
const char* const kLogging = "logging / saving / evaluation";
const char* const kExtras = "zerolora extras";
const char* const kCompat = "accepted for compatibility, no effect";

// HF flags with no effect here: parsed (so a bad value still fails) and reported in a note.
Flag compat_flag(TrainArgs& a, const std::string& name, Arity arity, const std::string& why) {
  Flag f;
  f.name = name, f.arity = arity, f.value_hint = arity == Arity::OptionalValue ? "BOOL" : "VALUE", f.help = why;
  f.set = [&a, name, arity, why](const FlagValues& v) {
    if (arity == Arity::OptionalValue && !v.empty()) parse_bool(name, v.front());
    a.notes.push_back("--" + name + " is accepted and has no effect: " + why);
  };
  return f;
}

const std::vector<std::pair<std::string, IntervalStrategy>> kStrategies = {
    {"no", IntervalStrategy::No}, {"steps", IntervalStrategy::Steps}, {"epoch", IntervalStrategy::Epoch}};

// Adds every train flag bound to a (or those in `only`, in table order).
void add_flags(FlagSet& fs, TrainArgs& a, const std::set<std::string>* only) {
  auto add = [&](Flag f, const char* group) {
    if (!only || only->count(f.name)) fs.add(std::move(f)).in_group(group);
  };
  Flag custom;
  // model
  add(model_name_or_path_flag(a.model_name_or_path), kModel);
  add(bool_flag("trust_remote_code", a.trust_remote_code, "accepted; no Python code is ever run from the model folder"),
      kModel);
  add(string_flag("padding_side", a.padding_side, "right", "tokenizer padding side; only right (FastChat hard-codes it)"),
      kModel);
  // data
  add(string_flag("data_path", a.data_path, "FILE", "training conversations, FastChat/ShareGPT JSON")
          .mark_required("data.json"),
      kData);
  add(string_flag("eval_data_path", a.eval_data_path, "FILE", "evaluation conversations (no automatic split)"), kData);
  add(bool_flag("lazy_preprocess", a.lazy_preprocess, "tokenize each sample when first used instead of all up front"),
      kData);
  add(model_max_length_flag(a.model_max_length), kData);
  // LoRA
  add(lora_r_flag(a.lora_r), kLora);
  add(lora_alpha_flag(a.lora_alpha), kLora);
  add(lora_dropout_flag(a.lora_dropout), kLora);
  add(list_flag("lora_target_modules", a.lora_target_modules, "NAME...",
                "modules to adapt, space-separated: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj "
                "lm_head embed_tokens"),
      kLora);
  add(string_flag("lora_weight_path", a.lora_weight_path, "PATH",
                  "PEFT adapter folder to start from (FastChat parses it but never reads it; we do); its "
                  "adapter_config.json gives r, lora_alpha, use_rslora and target_modules (a flag given that "
                  "disagrees is an error)"),
      kLora);
  add(choice_flag<LoraBias>("lora_bias", a.lora_bias,
                            {{"none", LoraBias::None}, {"all", LoraBias::All}, {"lora_only", LoraBias::LoraOnly}},
                            "which projection biases train, as PEFT (LLaMA has none, so all three are the same; "
                            "lora_only's trained biases are not saved in the adapter, as PEFT's)"),
      kLora);
  add(bool_flag("q_lora", a.q_lora,
                "QLoRA: projections stored as NF4 + double quant (bitsandbytes' format), bf16 compute"),
      kLora);
  // training
  add(string_flag("output_dir", a.output_dir, "DIR", "checkpoints, adapter, trainer_state.json").mark_required("./out"),
      kTraining);
  add(bool_flag("overwrite_output_dir", a.overwrite_output_dir,
                "like FastChat it does not stop the automatic resume (use --resume_from_checkpoint False); it "
                "allows starting over where output_dir holds another run's checkpoints"),
      kTraining);
  add(float_flag("num_train_epochs", a.num_train_epochs, "epochs (may be fractional)"), kTraining);
  add(int_flag("max_steps", a.max_steps, "optimizer steps; > 0 overrides epochs"), kTraining);
  add(int_flag("per_device_train_batch_size", a.per_device_train_batch_size, "samples per micro-batch per rank"),
      kTraining);
  add(int_flag("per_device_eval_batch_size", a.per_device_eval_batch_size, "samples per evaluation batch per rank"),
      kTraining);
  add(int_flag("gradient_accumulation_steps", a.gradient_accumulation_steps, "micro-batches per optimizer step"),
      kTraining);
  add(float_flag("learning_rate", a.learning_rate, "peak AdamW learning rate"), kTraining);
  add(float_flag("weight_decay", a.weight_decay, "AdamW decoupled weight decay (not on trained biases, as HF Trainer)"),
      kTraining);
  add(float_flag("adam_beta1", a.adam_beta1, "AdamW beta1"), kTraining);
  add(float_flag("adam_beta2", a.adam_beta2, "AdamW beta2"), kTraining);
  add(float_flag("adam_epsilon", a.adam_epsilon, "AdamW epsilon"), kTraining);
  add(float_flag("max_grad_norm", a.max_grad_norm,
                 "global L2 gradient clip, 0 = off (ignored under --deepspeed unless the JSON has gradient_clipping)"),
      kTraining);
  add(float_flag("warmup_ratio", a.warmup_ratio, "warmup = ceil(total steps x ratio)"), kTraining);
  add(int_flag("warmup_steps", a.warmup_steps, "warmup steps; > 0 overrides warmup_ratio"), kTraining);
  add(choice_flag<LrSchedulerType>(
          "lr_scheduler_type", a.lr_scheduler_type,
          {{"linear", LrSchedulerType::Linear}, {"cosine", LrSchedulerType::Cosine},
           {"constant", LrSchedulerType::Constant}, {"constant_with_warmup", LrSchedulerType::ConstantWithWarmup}},
          "learning-rate schedule (HF formulas)"),
      kTraining);
  custom = string_flag("optim", a.optim, "{adamw_torch,adamw_hf,adamw_torch_fused}",
                       "optimizer; all three are the same AdamW here");
  custom.set = [&a](const FlagValues& v) {
    static const std::set<std::string> same_adamw = {"adamw_torch", "adamw_hf", "adamw_torch_fused"};
    if (!same_adamw.count(v.front()))
      throw Error("--optim", "'" + v.front() + "' is not supported; zerolora implements AdamW only",
                  "use --optim adamw_torch (FastChat's default)");
    a.optim = v.front();
  };
  add(custom, kTraining);
  add(seed_flag(a.seed).with_help("seed for LoRA init, dropout and data order"), kTraining);
  add(bool_flag("gradient_checkpointing", a.gradient_checkpointing,
                "recompute block activations in backward (less memory, ~30% more compute)"),
      kTraining);
  custom = Flag{};
  custom.name = "resume_from_checkpoint", custom.arity = Arity::OptionalValue, custom.value_hint = "BOOL|DIR";
  custom.help = "not given: resume if output_dir has checkpoint-* (FastChat); True: latest; False: fresh; DIR: that "
                "checkpoint";
  custom.shown_default = "automatic";
  custom.set = [&a](const FlagValues& v) {
    auto b = v.empty() ? std::optional<bool>(true) : bool_from_text(v.front());
    a.resume_mode = b ? (*b ? ResumeMode::Latest : ResumeMode::Never) : ResumeMode::Path;
    a.resume_from_checkpoint = b ? "" : v.front();
  };
  add(custom, kTraining);
  // precision / distributed
  add(bf16_flag(a.bf16).with_help("bf16 weights/activations, fp32 master weights"), kPrecision);
  add(bool_flag("fp16", a.fp16,
                "fp16: frozen weights and GEMM inputs in IEEE half, fp32 master weights, dynamic loss scaling "
                "(DeepSpeed)"),
      kPrecision);
  custom = Flag{};
  custom.name = "tf32", custom.arity = Arity::OptionalValue, custom.value_hint = "BOOL";
  custom.help = "accepted; no effect on the CPU build";
  custom.shown_default = a.tf32 ? show_bool(*a.tf32) : std::string("None");
  custom.set = [&a](const FlagValues& v) { a.tf32 = v.empty() ? true : parse_bool("tf32", v.front()); };
  add(custom, kPrecision);
  add(bool_flag("flash_attn", a.flash_attn,
                "accepted; attention is always tiled and padding-aware here (GQA included)"),
      kPrecision);
  add(string_flag("deepspeed", a.deepspeed, "FILE",
                  "DeepSpeed JSON config (ZeRO stage, fp16 scaling, batch keys; \"auto\" as HF)"),
      kPrecision);
  add(int_flag("local_rank", a.local_rank, "accepted from the deepspeed launcher; ranks come from MPI"), kPrecision);
  add(int_flag("dataloader_num_workers", a.dataloader_num_workers, "accepted; preprocessing runs inside the trainer"),
      kPrecision);
  add(string_flag("cache_dir", a.cache_dir, "DIR", "accepted; nothing is downloaded"), kPrecision);
  // logging / saving / evaluation
  add(choice_flag<IntervalStrategy>("logging_strategy", a.logging_strategy, kStrategies,
                                    "when to log loss and learning rate"),
      kLogging);
  add(float_flag("logging_steps", a.logging_steps, "log every N steps (< 1: fraction of total steps)"), kLogging);
  add(bool_flag("logging_first_step", a.logging_first_step, "also log after step 1"), kLogging);
  add(choice_flag<IntervalStrategy>("save_strategy", a.save_strategy, kStrategies, "when to write checkpoint-<step>/"),
      kLogging);
  add(float_flag("save_steps", a.save_steps, "save every N steps (< 1: fraction of total steps)"), kLogging);
  custom = Flag{};
  custom.name = "save_total_limit", custom.value_hint = "INT";
  custom.help = "keep only the newest N checkpoints (<= 0 or not given: keep all)";
  custom.shown_default = a.save_total_limit ? std::to_string(*a.save_total_limit) : "None";
  custom.set = [&a](const FlagValues& v) { a.save_total_limit = parse_int("save_total_limit", v.front()); };
  add(custom, kLogging);
  add(choice_flag<IntervalStrategy>("evaluation_strategy", a.evaluation_strategy, kStrategies,
                                    "when to evaluate on --eval_data_path")
          .with_alias("eval_strategy"),
      kLogging);
  custom = Flag{};
  custom.name = "eval_steps", custom.value_hint = "FLOAT";
  custom.help = "evaluate every N steps (< 1: fraction of total); default: --logging_steps";
  custom.shown_default = a.eval_steps ? show_number(*a.eval_steps) : "None";
  custom.set = [&a](const FlagValues& v) { a.eval_steps = parse_float("eval_steps", v.front()); };
  add(custom, kLogging);
  custom = list_flag("report_to", a.report_to, "none",
                     "tensorboard (event files in --logging_dir), all (= tensorboard) or none; every log entry also "
                     "goes to --metrics_file");
  custom.set = [&a](const FlagValues& v) {
    report_to_tensorboard(v);  // wandb, mlflow, ...: an error naming tensorboard as the offline alternative
    a.report_to = v;
  };
  add(custom, kLogging);
  add(string_flag("logging_dir", a.logging_dir, "DIR",
                  "TensorBoard folder for --report_to tensorboard; \"\" = <output_dir>/runs/<date>_<host> (HF's)"),
      kLogging);
  // zerolora extras
  add(conv_template_flag(a.conv_template)
          .with_help("conversation template (FastChat's preprocess always uses vicuna_v1.1)"),
      kExtras);
  add(bool_flag("packing", a.packing, "pack several samples per row (no padding)"), kExtras);
  add(choice_flag<PaddingMode>("padding", a.padding,
                               {{"max_length", PaddingMode::MaxLength}, {"longest", PaddingMode::Longest}},
                               "pad rows to model_max_length (FastChat) or to the batch's longest"),
      kExtras);
  add(bool_flag("use_rslora", a.use_rslora, "rsLoRA scaling alpha / sqrt(r)"), kExtras);
  add(bool_flag("token_weighted_loss", a.token_weighted_loss,
                "False: mean per micro-batch / GA (HF < 4.46); True: mean over all tokens of the step"),
      kExtras);
  add(bool_flag("eval_token_weighted_loss", a.eval_token_weighted_loss,
                "False: eval_loss is HF's mean of the eval batches' mean losses (weighted by batch size); True: the "
                "mean over all evaluated tokens"),
      kExtras);
  add(bool_flag("strict_data", a.strict_data,
                "refuse samples FastChat silently drops (tokenization mismatch, bad roles)"),
      kExtras);
  add(bool_flag("continue_on_save_error", a.continue_on_save_error,
                "a checkpoint that cannot be written (disk full, I/O error) is reported and training goes on; False: "
                "the run stops. Either way the previous checkpoint stays whole"),
      kExtras);
  add(num_threads_flag(a.num_threads), kExtras);
  add(choice_flag<DeviceChoice>("device", a.device,
                                {{"auto", DeviceChoice::Auto}, {"cpu", DeviceChoice::Cpu}, {"cuda", DeviceChoice::Cuda}},
                                "where the step runs: cuda (rank r on GPU r mod the visible GPUs), cpu, or auto = "
                                "cuda when a GPU is visible and the build has CUDA"),
      kExtras);
  add(string_flag("metrics_file", a.metrics_file, "FILE", "JSON-lines metrics log; \"\" = <output_dir>/metrics.jsonl"),
      kExtras);
  // HF flags that FastChat users pass and that change nothing here
  add(compat_flag(a, "do_train", Arity::OptionalValue, "train_lora always trains"), kCompat);
  add(compat_flag(a, "do_eval", Arity::OptionalValue, "evaluation follows --evaluation_strategy"), kCompat);
  add(compat_flag(a, "run_name", Arity::One, "there is no experiment tracker"), kCompat);
  add(compat_flag(a, "disable_tqdm", Arity::OptionalValue, "progress is one log line per logging step"), kCompat);
  add(compat_flag(a, "ddp_timeout", Arity::One, "MPI has no collective timeout"), kCompat);
  add(compat_flag(a, "save_safetensors", Arity::OptionalValue, "weights are always written as safetensors"), kCompat);
  add(compat_flag(a, "remove_unused_columns", Arity::OptionalValue, "samples have no extra columns"), kCompat);
}

const char* const kTrainHeader =
    "usage: zerolora train --model_name_or_path DIR --data_path FILE --output_dir DIR [flags]\n"
    "FastChat train_lora.py flags: --flag value or --flag=value; bools take True/False (a bare --flag is True);\n"
    "lists take space-separated values. Defaults are HF TrainingArguments' unless FastChat's.";

FlagSet train_flag_set(TrainArgs& a) {
  FlagSet fs("zerolora train", kTrainHeader);
  fs.set_group_order({kModel, kData, kLora, kTraining, kPrecision, kLogging, kExtras, kCompat});
  add_flags(fs, a, nullptr);
  return fs;
}

// ---------------------------------------------------------------------------------------------
// Validation

void require_range(bool ok, const std::string& flag, const std::string& value, const std::string& rule) {
  if (!ok) throw Error("--" + flag, value + " is out of range: must be " + rule, "pass a value that is " + rule);
}

void validate_interval(const std::string& flag, double steps, IntervalStrategy strategy) {
  if (strategy != IntervalStrategy::Steps) return;
  require_range(steps > 0, flag, show_number(steps), "> 0 when the strategy is steps");
  // HF: "--logging_steps must be an integer if bigger than 1"
  require_range(steps < 1 || steps == std::floor(steps), flag, show_number(steps),
                "a whole number when > 1 (a value < 1 is a fraction of the total steps)");
}

}  // namespace

const std::vector<std::string>& lora_target_module_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",    "v_proj",  "o_proj",      "gate_proj",
                                                 "up_proj",   "down_proj", "lm_head", "embed_tokens"};
  return names;
}

std::string to_string(LrSchedulerType type) {
  switch (type) {
    case LrSchedulerType::Constant: return "constant";
    case LrSchedulerType::ConstantWithWarmup: return "constant_with_warmup";
    case LrSchedulerType::Linear: return "linear";
    case LrSchedulerType::Cosine: return "cosine";
  }
  return "?";
}

std::string to_string(IntervalStrategy strategy) {
  switch (strategy) {
    case IntervalStrategy::No: return "no";
    case IntervalStrategy::Steps: return "steps";
    case IntervalStrategy::Epoch: return "epoch";
  }
  return "?";
}

std::string to_string(LoraBias bias) {
  switch (bias) {
    case LoraBias::None: return "none";
    case LoraBias::All: return "all";
    case LoraBias::LoraOnly: return "lora_only";
  }
  return "?";
}

void validate_train_args(TrainArgs& a) {
  for (const auto& [flag, value, example] :
       {std::tuple{"model_name_or_path", &a.model_name_or_path, "./llama-7b"},
        std::tuple{"data_path", &a.data_path, "data.json"}, std::tuple{"output_dir", &a.output_dir, "./out"}})
    if (value->empty()) throw Error("--" + std::string(flag), "is required", "pass --" + std::string(flag) + " " + example);

  if (a.bf16 && a.fp16)
    throw Error("--bf16/--fp16", "both are True; only one half precision can be used",
                "pass only --bf16 True (or only --fp16 True)");
  if (a.padding_side != "right")
    throw Error("--padding_side", "'" + a.padding_side + "' is not supported: FastChat's masking assumes right padding",
                "drop the flag or pass --padding_side right");

  require_range(a.lora_r >= 1, "lora_r", std::to_string(a.lora_r), ">= 1");
  require_range(a.lora_alpha >= 1, "lora_alpha", std::to_string(a.lora_alpha), ">= 1");
  require_range(a.lora_dropout >= 0 && a.lora_dropout < 1, "lora_dropout", show_number(a.lora_dropout), "in [0, 1)");
  for (const auto& target : a.lora_target_modules) {
    const auto& known = lora_target_module_names();
    if (std::find(known.begin(), known.end(), target) != known.end()) continue;
    std::string fix = "use names from: " + show_list(known);
    if (target.find(',') != std::string::npos) fix = "separate names with spaces: --lora_target_modules q_proj v_proj";
    throw Error("--lora_target_modules", "'" + target + "' is not a LLaMA projection name", fix);
  }

  require_range(a.model_max_length >= 2, "model_max_length", std::to_string(a.model_max_length),
                ">= 2 (one input token and one target)");
  require_range(a.per_device_train_batch_size >= 1, "per_device_train_batch_size",
                std::to_string(a.per_device_train_batch_size), ">= 1");
  require_range(a.per_device_eval_batch_size >= 1, "per_device_eval_batch_size",
                std::to_string(a.per_device_eval_batch_size), ">= 1");
  require_range(a.gradient_accumulation_steps >= 1, "gradient_accumulation_steps",
                std::to_string(a.gradient_accumulation_steps), ">= 1");
  require_range(a.max_steps > 0 || a.num_train_epochs > 0, "num_train_epochs", show_number(a.num_train_epochs),
                "> 0 unless --max_steps is set");
  require_range(a.learning_rate > 0, "learning_rate", show_number(a.learning_rate), "> 0");
  require_range(a.weight_decay >= 0, "weight_decay", show_number(a.weight_decay), ">= 0");
  require_range(a.adam_beta1 >= 0 && a.adam_beta1 < 1, "adam_beta1", show_number(a.adam_beta1), "in [0, 1)");
  require_range(a.adam_beta2 >= 0 && a.adam_beta2 < 1, "adam_beta2", show_number(a.adam_beta2), "in [0, 1)");
  require_range(a.adam_epsilon > 0, "adam_epsilon", show_number(a.adam_epsilon), "> 0");
  require_range(a.max_grad_norm >= 0, "max_grad_norm", show_number(a.max_grad_norm), ">= 0 (0 = no clipping)");
  require_range(a.warmup_ratio >= 0 && a.warmup_ratio <= 1, "warmup_ratio", show_number(a.warmup_ratio), "in [0, 1]");
  require_range(a.warmup_steps >= 0, "warmup_steps", std::to_string(a.warmup_steps), ">= 0");
  require_range(a.num_threads >= 0, "num_threads", std::to_string(a.num_threads), ">= 0 (0 = the default)");
  require_range(a.dataloader_num_workers >= 0, "dataloader_num_workers", std::to_string(a.dataloader_num_workers),
                ">= 0");

  validate_interval("logging_steps", a.logging_steps, a.logging_strategy);
  validate_interval("save_steps", a.save_steps, a.save_strategy);
  // HF: evaluation every N steps defaults to the logging interval
  if (a.evaluation_strategy == IntervalStrategy::Steps && !a.eval_steps) a.eval_steps = a.logging_steps;
  if (a.eval_steps) validate_interval("eval_steps", *a.eval_steps, a.evaluation_strategy);
  if (a.evaluation_strategy != IntervalStrategy::No && a.eval_data_path.empty())
    throw Error("--evaluation_strategy", to_string(a.evaluation_strategy) + " needs --eval_data_path "
                "(HF stops at the first evaluation with \"Trainer: evaluation requires an eval_dataset\")",
                "add --eval_data_path FILE or pass --evaluation_strategy no");
  if (a.resume_mode == ResumeMode::Path && a.resume_from_checkpoint.empty())
    throw Error("--resume_from_checkpoint", "the folder name is empty", "pass a checkpoint folder, True or False");
  if (a.metrics_file.empty()) a.metrics_file = a.output_dir + "/metrics.jsonl";
}

namespace {

// Notes for flags that were given but change nothing, so a FastChat user knows why.
void add_notes_for_no_op_flags(TrainArgs& a) {
  if (a.trust_remote_code)
    a.notes.push_back("--trust_remote_code: no Python code runs here; the model folder is read as data "
                      "(FastChat's train_lora never passed it either)");
  if (a.tf32) a.notes.push_back("--tf32: TF32 is a GPU matmul mode; it has no effect on the CPU build");
  if (a.flash_attn)
    a.notes.push_back("--flash_attn: attention is always computed tile by tile without the T x T matrix, "
                      "skipping padding, with GQA support; the flag changes nothing");
  if (a.local_rank >= 0) a.notes.push_back("--local_rank is ignored: ranks come from MPI (mpirun -np N)");
  if (a.dataloader_num_workers > 0)
    a.notes.push_back("--dataloader_num_workers: samples are prepared inside the trainer; use --num_threads");
  if (!a.cache_dir.empty()) a.notes.push_back("--cache_dir is unused: zerolora downloads nothing");
  if (a.overwrite_output_dir)
    a.notes.push_back("--overwrite_output_dir does not stop the automatic resume of the same run (as in FastChat; "
                      "--resume_from_checkpoint False starts fresh); it lets a different run start over in this "
                      "output_dir");
  if (a.warmup_steps > 0 && a.warmup_ratio > 0)
    a.notes.push_back("both --warmup_steps and --warmup_ratio given: --warmup_steps wins (HF)");
}

}  // namespace

TrainArgs parse_train_args(const std::vector<std::string>& argv) {
  TrainArgs args;
  FlagSet fs = train_flag_set(args);
  if (!fs.parse(argv))
    throw Error("zerolora train", "--help is not a training flag here", "run zerolora train --help for the flags");
  for (const auto& n : fs.notes()) args.notes.push_back(n);
  validate_train_args(args);
  add_notes_for_no_op_flags(args);
  if (!args.lora_weight_path.empty()) {
    adopt_adapter_lora_config(args, fs.given_flags());
    validate_train_args(args);
  }
  return args;
}

std::string train_args_help() {
  TrainArgs defaults;
  return train_flag_set(defaults).help();
}

void add_train_flags(FlagSet& fs, TrainArgs& args, const std::set<std::string>& names) {
  TrainArgs scratch;
  const FlagSet all = train_flag_set(scratch);
  for (const auto& name : names) {
    bool known = false;
    for (const auto& f : all.flags()) known = known || f.name == name;
    if (!known) throw core::Error("add_train_flags", "no train flag --" + name, "name a flag of zerolora train --help");
  }
  add_flags(fs, args, &names);
}

void validate_eval_args(TrainArgs& a) {
  if (a.model_name_or_path.empty())
    throw Error("--model_name_or_path", "is required", "pass --model_name_or_path ./llama-7b");
  if (a.eval_data_path.empty()) a.eval_data_path = a.data_path;
  if (a.eval_data_path.empty())
    throw Error("--eval_data_path", "is required", "pass --eval_data_path FILE (or --data_path FILE)");
  require_range(a.model_max_length >= 2, "model_max_length", std::to_string(a.model_max_length),
                ">= 2 (one input token and one target)");
  require_range(a.per_device_eval_batch_size >= 1, "per_device_eval_batch_size",
                std::to_string(a.per_device_eval_batch_size), ">= 1");
  require_range(a.num_threads >= 0, "num_threads", std::to_string(a.num_threads), ">= 0 (0 = the default)");
}

void adopt_adapter_lora_config(TrainArgs& a, const std::set<std::string>& given) {
  const std::string config_path = a.lora_weight_path + "/adapter_config.json";
  model::LoraConfig saved;
  try {
    saved = model::read_peft_adapter_config(a.lora_weight_path);
  } catch (const FlagError&) {
    throw;
  } catch (const core::Error& e) {
    throw Error(e.what());  // a flag's value that is wrong on every rank alike: printed once under mpirun
  }
  std::vector<std::string> taken;
  auto disagree = [&](const std::string& flag, const std::string& ours, const std::string& theirs) {
    return Error("--" + flag,
                 "is " + ours + " but the adapter in --lora_weight_path has " + theirs + " (" + config_path + ")",
                 "drop --" + flag + " (the adapter's value is used) or pass --" + flag + " " + theirs);
  };
  // r
  if (given.count("lora_r") && a.lora_r != saved.r)
    throw disagree("lora_r", std::to_string(a.lora_r), std::to_string(saved.r));
  if (a.lora_r != saved.r) taken.push_back("r " + std::to_string(saved.r));
  a.lora_r = saved.r;
  // lora_alpha: an int in PEFT's LoraConfig, and in our flag
  if (saved.alpha != std::floor(saved.alpha) || saved.alpha < 1)
    throw core::Error(config_path + ":lora_alpha", "is " + show_number(saved.alpha) + "; --lora_alpha takes a "
                      "whole number >= 1 (PEFT's LoraConfig.lora_alpha is an int)", "write a whole lora_alpha there");
  const int64_t alpha = int64_t(saved.alpha);
  if (given.count("lora_alpha") && a.lora_alpha != alpha)
    throw disagree("lora_alpha", std::to_string(a.lora_alpha), std::to_string(alpha));
  if (a.lora_alpha != alpha) taken.push_back("lora_alpha " + std::to_string(alpha));
  a.lora_alpha = alpha;
  // use_rslora
  if (given.count("use_rslora") && a.use_rslora != saved.use_rslora)
    throw disagree("use_rslora", show_bool(a.use_rslora), show_bool(saved.use_rslora));
  if (a.use_rslora != saved.use_rslora) taken.push_back("use_rslora " + show_bool(saved.use_rslora));
  a.use_rslora = saved.use_rslora;
  // target_modules: PEFT writes them from a Python set, in no fixed order; they match as sets
  const std::set<std::string> ours(a.lora_target_modules.begin(), a.lora_target_modules.end());
  const std::set<std::string> theirs(saved.target_modules.begin(), saved.target_modules.end());
  if (given.count("lora_target_modules") && ours != theirs)
    throw disagree("lora_target_modules", show_list(a.lora_target_modules), show_list(saved.target_modules));
  if (ours != theirs) taken.push_back("target_modules " + show_list(saved.target_modules));
  a.lora_target_modules = saved.target_modules;
  // bias (PEFT's none / all / lora_only): which biases train, and whether the file holds them
  const std::string ours_bias = to_string(a.lora_bias);
  if (given.count("lora_bias") && ours_bias != saved.bias) throw disagree("lora_bias", ours_bias, saved.bias);
  if (ours_bias != saved.bias) taken.push_back("bias " + saved.bias);
  a.lora_bias = saved.bias == "all" ? LoraBias::All : saved.bias == "lora_only" ? LoraBias::LoraOnly : LoraBias::None;
  if (!taken.empty())
    a.notes.push_back("--lora_weight_path: " + [&] {
      std::string s;
      for (const auto& t : taken) s += (s.empty() ? "" : ", ") + t;
      return s;
    }() + " taken from " + config_path);
}

}  // namespace zerolora::train
