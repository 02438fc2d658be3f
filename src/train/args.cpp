#include "train/args.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace zerolora::train {

using core::Error;

namespace {

// ---------------------------------------------------------------------------------------------
// Value syntax (HfArgumentParser's)

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::optional<bool> bool_from_text(const std::string& text) {
  // transformers.hf_argparser.string_to_bool
  static const std::set<std::string> yes = {"yes", "true", "t", "y", "1"};
  static const std::set<std::string> no = {"no", "false", "f", "n", "0"};
  std::string t = lower(text);
  if (yes.count(t)) return true;
  if (no.count(t)) return false;
  return std::nullopt;
}

bool parse_bool(const std::string& flag, const std::string& text) {
  auto value = bool_from_text(text);
  if (!value) throw Error("--" + flag, "'" + text + "' is not a bool", "write True or False (or a bare --" + flag + ")");
  return *value;
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (text.empty() || err != std::errc() || ptr != end)
    throw Error("--" + flag, "'" + text + "' is not an integer", "write a whole number, e.g. --" + flag + " 8");
  return value;
}

double parse_float(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value))
    throw Error("--" + flag, "'" + text + "' is not a number", "write a number, e.g. --" + flag + " 2e-5");
  return value;
}

std::string show_bool(bool b) { return b ? "True" : "False"; }

std::string show_number(double x) {
  char buf[64];
  auto [ptr, err] = std::to_chars(buf, buf + sizeof buf, x);  // shortest round-trip: 5e-05, 0.999
  return std::string(buf, ptr);
}

std::string show_list(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : " ") + item;
  return s;
}

// ---------------------------------------------------------------------------------------------
// The flag table: each flag declared once with its group, help and default (shown from TrainArgs{}).

enum class Group { Model, Data, Lora, Training, Precision, Logging, Extras, Compat };
enum class Arity { OptionalValue, One, Many };  // OptionalValue: bools, `--flag` alone means True

using Values = std::vector<std::string>;

struct Flag {
  std::string name;
  Group group;
  Arity arity;
  std::string value_hint;
  std::string help;
  std::function<void(TrainArgs&, const Values&)> set;
  std::function<std::string(const TrainArgs&)> show;
  std::string alias = "";
};

const std::string& only(const Values& v) { return v.front(); }

Flag bool_flag(const std::string& name, Group g, bool TrainArgs::*m, const std::string& help) {
  return {name, g, Arity::OptionalValue, "BOOL", help,
          [=](TrainArgs& a, const Values& v) { a.*m = v.empty() ? true : parse_bool(name, only(v)); },
          [=](const TrainArgs& a) { return show_bool(a.*m); }};
}
Flag int_flag(const std::string& name, Group g, int64_t TrainArgs::*m, const std::string& help) {
  return {name, g, Arity::One, "INT", help,
          [=](TrainArgs& a, const Values& v) { a.*m = parse_int(name, only(v)); },
          [=](const TrainArgs& a) { return std::to_string(a.*m); }};
}
Flag float_flag(const std::string& name, Group g, double TrainArgs::*m, const std::string& help) {
  return {name, g, Arity::One, "FLOAT", help,
          [=](TrainArgs& a, const Values& v) { a.*m = parse_float(name, only(v)); },
          [=](const TrainArgs& a) { return show_number(a.*m); }};
}
Flag string_flag(const std::string& name, Group g, std::string TrainArgs::*m, const std::string& hint,
                 const std::string& help) {
  return {name, g, Arity::One, hint, help, [=](TrainArgs& a, const Values& v) { a.*m = only(v); },
          [=](const TrainArgs& a) { return (a.*m).empty() ? std::string("\"\"") : a.*m; }};
}
Flag required_flag(const std::string& name, Group g, std::string TrainArgs::*m, const std::string& hint,
                   const std::string& help) {
  Flag flag = string_flag(name, g, m, hint, help);
  flag.show = [](const TrainArgs&) { return std::string("required"); };
  return flag;
}
template <class E>
Flag choice_flag(const std::string& name, Group g, E TrainArgs::*m, std::vector<std::pair<std::string, E>> choices,
                 const std::string& help) {
  std::string hint;
  for (const auto& [text, value] : choices) hint += (hint.empty() ? "{" : ",") + text;
  hint += "}";
  return {name, g, Arity::One, hint, help,
          [=](TrainArgs& a, const Values& v) {
            for (const auto& [text, value] : choices)
              if (lower(only(v)) == text) { a.*m = value; return; }
            throw Error("--" + name, "'" + only(v) + "' is not supported", "use one of " + hint);
          },
          [=](const TrainArgs& a) {
            for (const auto& [text, value] : choices)
              if (a.*m == value) return text;
            return std::string("?");
          }};
}
// HF flags with no effect here: parsed (so a bad value still fails) and reported in a note.
Flag compat_flag(const std::string& name, Arity arity, const std::string& why) {
  return {name, Group::Compat, arity, arity == Arity::OptionalValue ? "BOOL" : "VALUE", why,
          [=](TrainArgs& a, const Values& v) {
            if (arity == Arity::OptionalValue && !v.empty()) parse_bool(name, only(v));
            a.notes.push_back("--" + name + " is accepted and has no effect: " + why);
          },
          [](const TrainArgs&) { return std::string("-"); }};
}

const std::vector<std::pair<std::string, IntervalStrategy>> kStrategies = {
    {"no", IntervalStrategy::No}, {"steps", IntervalStrategy::Steps}, {"epoch", IntervalStrategy::Epoch}};

const std::vector<Flag>& flag_table() {
  using G = Group;
  using A = TrainArgs;
  static const std::vector<Flag> table = [] {
    std::vector<Flag> t;
    // model
    t.push_back(required_flag("model_name_or_path", G::Model, &A::model_name_or_path, "DIR",
                            "HF model folder: config.json, *.safetensors, tokenizer"));
    t.push_back(bool_flag("trust_remote_code", G::Model, &A::trust_remote_code,
                          "accepted; no Python code is ever run from the model folder"));
    t.push_back(string_flag("padding_side", G::Model, &A::padding_side, "right",
                            "tokenizer padding side; only right (FastChat hard-codes it)"));
    // data
    t.push_back(required_flag("data_path", G::Data, &A::data_path, "FILE",
                            "training conversations, FastChat/ShareGPT JSON"));
    t.push_back(string_flag("eval_data_path", G::Data, &A::eval_data_path, "FILE",
                            "evaluation conversations (no automatic split)"));
    t.push_back(bool_flag("lazy_preprocess", G::Data, &A::lazy_preprocess,
                          "tokenize each sample when first used instead of all up front"));
    t.push_back(int_flag("model_max_length", G::Data, &A::model_max_length,
                         "tokens per sample: longer ones are truncated, shorter ones padded"));
    // LoRA
    t.push_back(int_flag("lora_r", G::Lora, &A::lora_r, "LoRA rank r"));
    t.push_back(int_flag("lora_alpha", G::Lora, &A::lora_alpha, "LoRA alpha (scaling = alpha / r)"));
    t.push_back(float_flag("lora_dropout", G::Lora, &A::lora_dropout, "dropout on the LoRA input, in [0, 1)"));
    t.push_back({"lora_target_modules", G::Lora, Arity::Many, "NAME...",
                 "projections to adapt, space-separated: q_proj k_proj v_proj o_proj gate_proj up_proj "
                 "down_proj lm_head",
                 [](A& a, const Values& v) { a.lora_target_modules = v; },
                 [](const A& a) { return show_list(a.lora_target_modules); }});
    t.push_back(string_flag("lora_weight_path", G::Lora, &A::lora_weight_path, "PATH",
                            "PEFT adapter folder to start from (FastChat parses it but never reads it; we do)"));
    t.push_back(choice_flag<LoraBias>("lora_bias", G::Lora, &A::lora_bias,
                                      {{"none", LoraBias::None}, {"all", LoraBias::All},
                                       {"lora_only", LoraBias::LoraOnly}},
                                      "which biases train (LLaMA has none, so all three are the same)"));
    t.push_back(bool_flag("q_lora", G::Lora, &A::q_lora, "QLoRA: projections stored as NF4 + double quant (bitsandbytes' format), bf16 compute"));
    // training
    t.push_back(required_flag("output_dir", G::Training, &A::output_dir, "DIR",
                            "checkpoints, adapter, trainer_state.json"));
    t.push_back(bool_flag("overwrite_output_dir", G::Training, &A::overwrite_output_dir,
                          "like FastChat it does not stop the automatic resume (use --resume_from_checkpoint "
                          "False); it allows starting over where output_dir holds another run's checkpoints"));
    t.push_back(float_flag("num_train_epochs", G::Training, &A::num_train_epochs, "epochs (may be fractional)"));
    t.push_back(int_flag("max_steps", G::Training, &A::max_steps, "optimizer steps; > 0 overrides epochs"));
    t.push_back(int_flag("per_device_train_batch_size", G::Training, &A::per_device_train_batch_size,
                         "samples per micro-batch per rank"));
    t.push_back(int_flag("per_device_eval_batch_size", G::Training, &A::per_device_eval_batch_size,
                         "samples per evaluation batch per rank"));
    t.push_back(int_flag("gradient_accumulation_steps", G::Training, &A::gradient_accumulation_steps,
                         "micro-batches per optimizer step"));
    t.push_back(float_flag("learning_rate", G::Training, &A::learning_rate, "peak AdamW learning rate"));
    t.push_back(float_flag("weight_decay", G::Training, &A::weight_decay, "AdamW decoupled weight decay"));
    t.push_back(float_flag("adam_beta1", G::Training, &A::adam_beta1, "AdamW beta1"));
    t.push_back(float_flag("adam_beta2", G::Training, &A::adam_beta2, "AdamW beta2"));
    t.push_back(float_flag("adam_epsilon", G::Training, &A::adam_epsilon, "AdamW epsilon"));
    t.push_back(float_flag("max_grad_norm", G::Training, &A::max_grad_norm,
                           "global L2 gradient clip, 0 = off (ignored under --deepspeed unless the JSON "
                           "has gradient_clipping)"));
    t.push_back(float_flag("warmup_ratio", G::Training, &A::warmup_ratio, "warmup = ceil(total steps x ratio)"));
    t.push_back(int_flag("warmup_steps", G::Training, &A::warmup_steps, "warmup steps; > 0 overrides warmup_ratio"));
    t.push_back(choice_flag<LrSchedulerType>(
        "lr_scheduler_type", G::Training, &A::lr_scheduler_type,
        {{"linear", LrSchedulerType::Linear}, {"cosine", LrSchedulerType::Cosine},
         {"constant", LrSchedulerType::Constant}, {"constant_with_warmup", LrSchedulerType::ConstantWithWarmup}},
        "learning-rate schedule (HF formulas)"));
    t.push_back({"optim", G::Training, Arity::One, "{adamw_torch,adamw_hf,adamw_torch_fused}",
                 "optimizer; all three are the same AdamW here",
                 [](A& a, const Values& v) {
                   static const std::set<std::string> same_adamw = {"adamw_torch", "adamw_hf", "adamw_torch_fused"};
                   if (!same_adamw.count(only(v)))
                     throw Error("--optim", "'" + only(v) + "' is not supported; zerolora implements AdamW only",
                                 "use --optim adamw_torch (FastChat's default)");
                   a.optim = only(v);
                 },
                 [](const A& a) { return a.optim; }});
    t.push_back(int_flag("seed", G::Training, &A::seed, "seed for LoRA init, dropout and data order"));
    t.push_back(bool_flag("gradient_checkpointing", G::Training, &A::gradient_checkpointing,
                          "recompute block activations in backward (less memory, ~30% more compute)"));
    t.push_back({"resume_from_checkpoint", G::Training, Arity::OptionalValue, "BOOL|DIR",
                 "not given: resume if output_dir has checkpoint-* (FastChat); True: latest; False: fresh; "
                 "DIR: that checkpoint",
                 [](A& a, const Values& v) {
                   auto b = v.empty() ? std::optional<bool>(true) : bool_from_text(only(v));
                   a.resume_mode = b ? (*b ? ResumeMode::Latest : ResumeMode::Never) : ResumeMode::Path;
                   a.resume_from_checkpoint = b ? "" : only(v);
                 },
                 [](const A&) { return std::string("automatic"); }});
    // precision / distributed
    t.push_back(bool_flag("bf16", G::Precision, &A::bf16, "bf16 weights/activations, fp32 master weights"));
    t.push_back(bool_flag("fp16", G::Precision, &A::fp16, "fp16: frozen weights and GEMM inputs in IEEE half, fp32 master weights, dynamic loss scaling (DeepSpeed)"));
    t.push_back({"tf32", G::Precision, Arity::OptionalValue, "BOOL", "accepted; no effect on the CPU build",
                 [](A& a, const Values& v) { a.tf32 = v.empty() ? true : parse_bool("tf32", only(v)); },
                 [](const A& a) { return a.tf32 ? show_bool(*a.tf32) : std::string("None"); }});
    t.push_back(bool_flag("flash_attn", G::Precision, &A::flash_attn,
                          "accepted; attention is always tiled and padding-aware here (GQA included)"));
    t.push_back(string_flag("deepspeed", G::Precision, &A::deepspeed, "FILE",
                            "DeepSpeed JSON config (ZeRO stage, fp16 scaling, batch keys; \"auto\" as HF)"));
    t.push_back(int_flag("local_rank", G::Precision, &A::local_rank,
                         "accepted from the deepspeed launcher; ranks come from MPI"));
    t.push_back(int_flag("dataloader_num_workers", G::Precision, &A::dataloader_num_workers,
                         "accepted; preprocessing runs inside the trainer"));
    t.push_back(string_flag("cache_dir", G::Precision, &A::cache_dir, "DIR", "accepted; nothing is downloaded"));
    // logging / saving / evaluation
    t.push_back(choice_flag<IntervalStrategy>("logging_strategy", G::Logging, &A::logging_strategy, kStrategies,
                                              "when to log loss and learning rate"));
    t.push_back(float_flag("logging_steps", G::Logging, &A::logging_steps,
                           "log every N steps (< 1: fraction of total steps)"));
    t.push_back(bool_flag("logging_first_step", G::Logging, &A::logging_first_step, "also log after step 1"));
    t.push_back(choice_flag<IntervalStrategy>("save_strategy", G::Logging, &A::save_strategy, kStrategies,
                                              "when to write checkpoint-<step>/"));
    t.push_back(float_flag("save_steps", G::Logging, &A::save_steps,
                           "save every N steps (< 1: fraction of total steps)"));
    t.push_back({"save_total_limit", G::Logging, Arity::One, "INT",
                 "keep only the newest N checkpoints (<= 0 or not given: keep all)",
                 [](A& a, const Values& v) { a.save_total_limit = parse_int("save_total_limit", only(v)); },
                 [](const A& a) { return a.save_total_limit ? std::to_string(*a.save_total_limit) : "None"; }});
    Flag eval_strategy = choice_flag<IntervalStrategy>("evaluation_strategy", G::Logging, &A::evaluation_strategy,
                                                       kStrategies, "when to evaluate on --eval_data_path");
    eval_strategy.alias = "eval_strategy";
    t.push_back(eval_strategy);
    t.push_back({"eval_steps", G::Logging, Arity::One, "FLOAT",
                 "evaluate every N steps (< 1: fraction of total); default: --logging_steps",
                 [](A& a, const Values& v) { a.eval_steps = parse_float("eval_steps", only(v)); },
                 [](const A& a) { return a.eval_steps ? show_number(*a.eval_steps) : "None"; }});
    t.push_back({"report_to", G::Logging, Arity::Many, "none", "integrations: none only (metrics go to --metrics_file)",
                 [](A& a, const Values& v) {
                   for (const auto& item : v)
                     if (!item.empty() && lower(item) != "none")
                       throw Error("--report_to", "'" + item + "' is not available: zerolora has no "
                                   "wandb/tensorboard/mlflow integration",
                                   "pass --report_to none; metrics are written as JSON lines to --metrics_file");
                   a.report_to = v;
                 },
                 [](const A& a) { return show_list(a.report_to); }});
    // zerolora extras
    t.push_back(string_flag("conv_template", G::Extras, &A::conv_template, "NAME",
                            "conversation template (FastChat's preprocess always uses vicuna_v1.1)"));
    t.push_back(bool_flag("packing", G::Extras, &A::packing, "pack several samples per row (no padding)"));
    t.push_back(choice_flag<PaddingMode>("padding", G::Extras, &A::padding,
                                         {{"max_length", PaddingMode::MaxLength}, {"longest", PaddingMode::Longest}},
                                         "pad rows to model_max_length (FastChat) or to the batch's longest"));
    t.push_back(bool_flag("use_rslora", G::Extras, &A::use_rslora, "rsLoRA scaling alpha / sqrt(r)"));
    t.push_back(bool_flag("token_weighted_loss", G::Extras, &A::token_weighted_loss,
                          "False: mean per micro-batch / GA (HF < 4.46); True: mean over all tokens of the step"));
    t.push_back(bool_flag("eval_token_weighted_loss", G::Extras, &A::eval_token_weighted_loss,
                          "False: eval_loss is HF's mean of the eval batches' mean losses (weighted by batch size); "
                          "True: the mean over all evaluated tokens"));
    t.push_back(bool_flag("strict_data", G::Extras, &A::strict_data,
                          "refuse samples FastChat silently drops (tokenization mismatch, bad roles)"));
    t.push_back(bool_flag("continue_on_save_error", G::Extras, &A::continue_on_save_error,
                          "a checkpoint that cannot be written (disk full, I/O error) is reported and training "
                          "goes on; False: the run stops. Either way the previous checkpoint stays whole"));
    t.push_back(int_flag("num_threads", G::Extras, &A::num_threads, "CPU threads per rank, 0 = all cores"));
    t.push_back(choice_flag<DeviceChoice>("device", G::Extras, &A::device,
                                          {{"auto", DeviceChoice::Auto}, {"cpu", DeviceChoice::Cpu},
                                           {"cuda", DeviceChoice::Cuda}},
                                          "where the step runs: cuda (rank r on GPU r mod the visible GPUs), cpu, "
                                          "or auto = cuda when a GPU is visible and the build has CUDA"));
    t.push_back(string_flag("metrics_file", G::Extras, &A::metrics_file, "FILE",
                            "JSON-lines metrics log; \"\" = <output_dir>/metrics.jsonl"));
    // HF flags that FastChat users pass and that change nothing here
    t.push_back(compat_flag("do_train", Arity::OptionalValue, "train_lora always trains"));
    t.push_back(compat_flag("do_eval", Arity::OptionalValue, "evaluation follows --evaluation_strategy"));
    t.push_back(compat_flag("logging_dir", Arity::One, "there is no TensorBoard output; see --metrics_file"));
    t.push_back(compat_flag("run_name", Arity::One, "there is no experiment tracker"));
    t.push_back(compat_flag("disable_tqdm", Arity::OptionalValue, "progress is one log line per logging step"));
    t.push_back(compat_flag("ddp_timeout", Arity::One, "MPI has no collective timeout"));
    t.push_back(compat_flag("save_safetensors", Arity::OptionalValue, "weights are always written as safetensors"));
    t.push_back(compat_flag("remove_unused_columns", Arity::OptionalValue, "samples have no extra columns"));
    return t;
  }();
  return table;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

size_t common_prefix_length(const std::string& a, const std::string& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

Error unknown_flag_error(const std::string& name) {
  // Names people reach for that edit distance would not lead to the right flag (FastChat#2943).
  static const std::map<std::string, std::string> known_misnames = {
      {"evaluation_data_file", "eval_data_path"}, {"eval_data_file", "eval_data_path"},
      {"validation_data_path", "eval_data_path"}, {"train_data_path", "data_path"}};
  std::string best;
  size_t best_distance = SIZE_MAX;
  int64_t best_score = INT64_MAX;
  for (const auto& flag : flag_table())
    for (const auto& candidate : {flag.name, flag.alias}) {
      if (candidate.empty()) continue;
      // edit distance first, a longer shared prefix breaks near-ties (--lora_rank: --lora_r, not --local_rank)
      size_t d = edit_distance(name, candidate);
      int64_t score = 2 * static_cast<int64_t>(d) - static_cast<int64_t>(common_prefix_length(name, candidate));
      if (score < best_score) best_score = score, best_distance = d, best = candidate;
    }
  std::string what = "unknown flag --" + name;
  if (auto it = known_misnames.find(name); it != known_misnames.end())
    what += "; did you mean --" + it->second + "?";
  else if (best_distance <= std::max<size_t>(3, name.size() / 2))
    what += "; did you mean --" + best + "?";
  return Error("zerolora train", what, "see zerolora train --help for the flags");
}

const Flag& find_flag(const std::string& name) {
  for (const auto& flag : flag_table())
    if (flag.name == name || flag.alias == name) return flag;
  throw unknown_flag_error(name);
}

bool is_flag_token(const std::string& token) { return token.size() > 2 && token.rfind("--", 0) == 0; }

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
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                                 "gate_proj", "up_proj", "down_proj", "lm_head"};
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
  require_range(a.num_threads >= 0, "num_threads", std::to_string(a.num_threads), ">= 0 (0 = all cores)");
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
  std::string previous_flag;
  for (size_t i = 0; i < argv.size();) {
    const std::string& token = argv[i];
    if (!is_flag_token(token)) {
      std::string after = previous_flag.empty() ? "" : " after --" + previous_flag;
      throw Error("zerolora train", "unexpected argument '" + token + "'" + after +
                  (previous_flag.empty() ? "" : " (that flag takes one value)"),
                  "flags are written --name value; list values only follow list flags such as "
                  "--lora_target_modules");
    }
    std::string name = token.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    std::replace(name.begin(), name.end(), '-', '_');  // HfArgumentParser accepts --learning-rate too
    const Flag& flag = find_flag(name);
    ++i;
    Values values;
    if (inline_value) {
      values.push_back(*inline_value);
    } else {
      while (i < argv.size() && !is_flag_token(argv[i])) {
        values.push_back(argv[i++]);
        if (flag.arity != Arity::Many) break;
      }
      if (values.empty() && flag.arity != Arity::OptionalValue)
        throw Error("--" + flag.name, "needs a value", "write --" + flag.name + " " + flag.value_hint);
    }
    flag.set(args, values);
    previous_flag = flag.name;
  }
  validate_train_args(args);
  add_notes_for_no_op_flags(args);
  return args;
}

namespace {

// "  --flag HINT" then the help text from column kHelpColumn, wrapped at kHelpWidth characters; a flag too
// long for its column gets the text on the next line.
std::string wrap_help_line(const std::string& left, const std::string& text) {
  constexpr size_t kHelpColumn = 38, kHelpWidth = 110;
  std::string out = left;
  size_t column = left.size();
  if (column + 2 > kHelpColumn) out += "\n", column = 0;
  std::istringstream words(text);
  std::string word;
  bool line_empty = true;
  while (words >> word) {
    if (!line_empty && column + 1 + word.size() > kHelpWidth) out += "\n", column = 0, line_empty = true;
    if (line_empty) out += std::string(kHelpColumn - column, ' '), column = kHelpColumn;
    else out += " ", ++column;
    std::replace(word.begin(), word.end(), '\x1f', ' ');
    out += word;
    column += word.size();
    line_empty = false;
  }
  return out + "\n";
}

}  // namespace

std::string train_args_help() {
  static const std::vector<std::pair<Group, std::string>> groups = {
      {Group::Model, "model"},
      {Group::Data, "data"},
      {Group::Lora, "LoRA"},
      {Group::Training, "training"},
      {Group::Precision, "precision / distributed"},
      {Group::Logging, "logging / saving / evaluation"},
      {Group::Extras, "zerolora extras"},
      {Group::Compat, "accepted for compatibility, no effect"}};
  const TrainArgs defaults;
  std::ostringstream out;
  out << "usage: zerolora train --model_name_or_path DIR --data_path FILE --output_dir DIR [flags]\n"
         "FastChat train_lora.py flags: --flag value or --flag=value; bools take True/False (a bare --flag is "
         "True);\nlists take space-separated values. Defaults are HF TrainingArguments' unless FastChat's.\n";
  for (const auto& [group, title] : groups) {
    out << "\n" << title << ":\n";
    for (const auto& flag : flag_table()) {
      if (flag.group != group) continue;
      std::string left = "  --" + flag.name + " " + flag.value_hint;
      if (!flag.alias.empty()) left += " (or --" + flag.alias + ")";
      std::string text = flag.help;
      std::string shown = flag.show(defaults);
      // \x1f keeps "[default: X]" on one line when wrapping
      if (group != Group::Compat) text += shown == "required" ? " [required]" : " [default:\x1f" + shown + "]";
      out << wrap_help_line(left, text);
    }
  }
  return out.str();
}

}  // namespace zerolora::train
