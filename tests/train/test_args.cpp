#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "train/args.h"

using namespace zerolora::train;
using zerolora::core::Error;
using zerolora::test::TempDir;
using zerolora::test::write_file;

namespace {

std::vector<std::string> required_flags() {
  return {"--model_name_or_path", "./llama", "--data_path", "data.json", "--output_dir", "./out"};
}

TrainArgs parse_with_required(const std::vector<std::string>& extra) {
  auto argv = required_flags();
  argv.insert(argv.end(), extra.begin(), extra.end());
  return parse_train_args(argv);
}

// The message of the Error that parsing throws, or "<parsed>" when it does not throw.
std::string error_for(const std::vector<std::string>& extra, bool add_required = true) {
  auto argv = add_required ? required_flags() : std::vector<std::string>{};
  argv.insert(argv.end(), extra.begin(), extra.end());
  try {
    parse_train_args(argv);
  } catch (const Error& e) {
    return e.what();
  }
  return "<parsed>";
}

bool has_note(const TrainArgs& a, const std::string& fragment) {
  for (const auto& note : a.notes)
    if (note.find(fragment) != std::string::npos) return true;
  return false;
}

#define EXPECT_ERROR_HAS(extra, fragment)                                           \
  do {                                                                              \
    std::string msg_ = error_for extra;                                             \
    EXPECT_NE(msg_.find(fragment), std::string::npos) << "message: " << msg_;      \
  } while (0)

}  // namespace

// scripts/train_lora.sh (fastchat-spec §5.1) plus the --eval_data_path its step evaluation needs, and the
// --local_rank=N the deepspeed launcher appends.
TEST(TrainArgs, FastChatTrainLoraScript) {
  TrainArgs a = parse_train_args({
      "--model_name_or_path", "lmsys/vicuna-7b-v1.5", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05",
      "--data_path", "data.json", "--eval_data_path", "eval.json", "--output_dir", "./checkpoints",
      "--num_train_epochs", "150", "--fp16", "True", "--per_device_train_batch_size", "2",
      "--per_device_eval_batch_size", "2", "--gradient_accumulation_steps", "1", "--evaluation_strategy", "steps",
      "--eval_steps", "100", "--save_strategy", "steps", "--save_steps", "200", "--save_total_limit", "2",
      "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
      "--logging_strategy", "steps", "--logging_steps", "1", "--tf32", "True", "--model_max_length", "2048",
      "--q_lora", "False", "--deepspeed", "ds.json", "--gradient_checkpointing", "True", "--flash_attn", "False",
      "--local_rank=0"});
  EXPECT_EQ(a.model_name_or_path, "lmsys/vicuna-7b-v1.5");
  EXPECT_EQ(a.num_train_epochs, 150.0);
  EXPECT_TRUE(a.fp16);
  EXPECT_FALSE(a.bf16);
  EXPECT_EQ(a.per_device_train_batch_size, 2);
  EXPECT_EQ(a.evaluation_strategy, IntervalStrategy::Steps);
  EXPECT_EQ(a.eval_steps, 100.0);
  EXPECT_EQ(a.save_steps, 200.0);
  EXPECT_EQ(a.save_total_limit, 2);
  EXPECT_DOUBLE_EQ(a.learning_rate, 2e-5);
  EXPECT_EQ(a.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(a.warmup_ratio, 0.03);
  EXPECT_EQ(a.lr_scheduler_type, LrSchedulerType::Cosine);
  EXPECT_EQ(a.logging_steps, 1.0);
  EXPECT_EQ(a.tf32, true);
  EXPECT_EQ(a.model_max_length, 2048);
  EXPECT_FALSE(a.q_lora);
  EXPECT_EQ(a.deepspeed, "ds.json");
  EXPECT_TRUE(a.gradient_checkpointing);
  EXPECT_EQ(a.local_rank, 0);
  EXPECT_TRUE(has_note(a, "--tf32"));
  EXPECT_TRUE(has_note(a, "--local_rank"));
  EXPECT_FALSE(has_note(a, "--flash_attn"));  // False: nothing to explain
}

// docs/training.md "Fine-tuning using (Q)LoRA" (fastchat-spec §5.1).
TEST(TrainArgs, FastChatDocsQLoraCommand) {
  TrainArgs a = parse_train_args({
      "--model_name_or_path", "~/model_weights/llama-7b", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout",
      "0.05", "--data_path", "./data/dummy_conversation.json", "--bf16", "True", "--output_dir", "./checkpoints",
      "--num_train_epochs", "3", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1",
      "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
      "--save_steps", "1200", "--save_total_limit", "100", "--learning_rate", "2e-5", "--weight_decay", "0.",
      "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--tf32", "True",
      "--model_max_length", "2048", "--q_lora", "True", "--deepspeed", "playground/deepspeed_config_s2.json"});
  EXPECT_TRUE(a.bf16);
  EXPECT_TRUE(a.q_lora);
  EXPECT_EQ(a.evaluation_strategy, IntervalStrategy::No);
  EXPECT_FALSE(a.eval_steps.has_value());
  EXPECT_EQ(a.save_total_limit, 100);
  EXPECT_EQ(a.per_device_train_batch_size, 1);
}

TEST(TrainArgs, DefaultsAreHfAndFastChat) {
  TrainArgs a = parse_with_required({});
  EXPECT_DOUBLE_EQ(a.learning_rate, 5e-5);
  EXPECT_EQ(a.num_train_epochs, 3.0);
  EXPECT_EQ(a.max_steps, -1);
  EXPECT_EQ(a.per_device_train_batch_size, 8);
  EXPECT_EQ(a.gradient_accumulation_steps, 1);
  EXPECT_EQ(a.max_grad_norm, 1.0);
  EXPECT_EQ(a.adam_beta2, 0.999);
  EXPECT_EQ(a.adam_epsilon, 1e-8);
  EXPECT_EQ(a.lr_scheduler_type, LrSchedulerType::Linear);
  EXPECT_EQ(a.logging_steps, 500.0);
  EXPECT_EQ(a.save_steps, 500.0);
  EXPECT_FALSE(a.save_total_limit.has_value());
  EXPECT_EQ(a.model_max_length, 512);
  EXPECT_EQ(a.optim, "adamw_torch");
  EXPECT_EQ(a.lora_r, 8);
  EXPECT_EQ(a.lora_alpha, 16);
  EXPECT_EQ(a.lora_dropout, 0.05);
  EXPECT_EQ(a.lora_target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(a.lora_bias, LoraBias::None);
  EXPECT_EQ(a.seed, 42);
  EXPECT_FALSE(a.tf32.has_value());
  EXPECT_EQ(a.conv_template, "vicuna_v1.1");
  EXPECT_EQ(a.padding, PaddingMode::MaxLength);
  EXPECT_EQ(a.resume_mode, ResumeMode::Auto);
  EXPECT_EQ(a.metrics_file, "./out/metrics.jsonl");
  EXPECT_TRUE(a.notes.empty());
}

TEST(TrainArgs, BoolSyntax) {
  EXPECT_TRUE(parse_with_required({"--bf16", "True"}).bf16);
  EXPECT_TRUE(parse_with_required({"--bf16", "yes"}).bf16);
  EXPECT_TRUE(parse_with_required({"--bf16", "1"}).bf16);
  EXPECT_TRUE(parse_with_required({"--bf16", "true"}).bf16);
  EXPECT_TRUE(parse_with_required({"--bf16=T"}).bf16);
  EXPECT_FALSE(parse_with_required({"--bf16", "False"}).bf16);
  EXPECT_FALSE(parse_with_required({"--bf16", "no"}).bf16);
  EXPECT_FALSE(parse_with_required({"--bf16", "0"}).bf16);
  EXPECT_FALSE(parse_with_required({"--bf16=false"}).bf16);
  // a bare flag is True, whether another flag or the end follows
  TrainArgs a = parse_with_required({"--bf16", "--gradient_checkpointing"});
  EXPECT_TRUE(a.bf16);
  EXPECT_TRUE(a.gradient_checkpointing);
}

TEST(TrainArgs, ValueSyntax) {
  TrainArgs a = parse_with_required({"--learning-rate=3e-4", "--lora_target_modules", "q_proj", "k_proj", "v_proj",
                                     "o_proj", "--max_steps", "-1", "--eval_strategy", "steps", "--eval_data_path",
                                     "e.json", "--logging_steps", "10", "--save_total_limit=3"});
  EXPECT_DOUBLE_EQ(a.learning_rate, 3e-4);
  EXPECT_EQ(a.lora_target_modules, (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_EQ(a.max_steps, -1);
  EXPECT_EQ(a.evaluation_strategy, IntervalStrategy::Steps);
  EXPECT_EQ(a.eval_steps, 10.0);  // HF: defaults to logging_steps
  EXPECT_EQ(a.save_total_limit, 3);
  // the last occurrence wins, as with argparse
  EXPECT_EQ(parse_with_required({"--lora_r", "4", "--lora_r", "16"}).lora_r, 16);
  EXPECT_EQ(parse_with_required({"--local_rank", "3"}).local_rank, 3);
}

TEST(TrainArgs, ResumeFromCheckpointForms) {
  EXPECT_EQ(parse_with_required({}).resume_mode, ResumeMode::Auto);
  EXPECT_EQ(parse_with_required({"--resume_from_checkpoint"}).resume_mode, ResumeMode::Latest);
  EXPECT_EQ(parse_with_required({"--resume_from_checkpoint", "True"}).resume_mode, ResumeMode::Latest);
  EXPECT_EQ(parse_with_required({"--resume_from_checkpoint", "False"}).resume_mode, ResumeMode::Never);
  TrainArgs a = parse_with_required({"--resume_from_checkpoint", "out/checkpoint-200"});
  EXPECT_EQ(a.resume_mode, ResumeMode::Path);
  EXPECT_EQ(a.resume_from_checkpoint, "out/checkpoint-200");
}

TEST(TrainArgs, NotesForFlagsWithoutEffect) {
  // (--lora_weight_path is no longer in this list: the parser now reads the adapter's adapter_config.json, so a
  // made-up path is an error; LoraWeightPath* below cover it)
  TrainArgs a = parse_with_required({"--trust_remote_code", "True", "--flash_attn", "True", "--do_train",
                                     "--cache_dir", "c", "--warmup_steps", "5", "--warmup_ratio", "0.1",
                                     "--save_safetensors", "False"});
  EXPECT_TRUE(has_note(a, "--trust_remote_code"));
  EXPECT_TRUE(has_note(a, "--flash_attn"));
  EXPECT_TRUE(has_note(a, "--do_train"));
  EXPECT_TRUE(has_note(a, "--cache_dir"));
  EXPECT_TRUE(has_note(a, "--warmup_steps wins"));
  EXPECT_TRUE(has_note(a, "--save_safetensors"));
  EXPECT_EQ(a.notes.size(), 6u);
}

TEST(TrainArgsErrors, UnknownFlagSuggestsNearest) {
  EXPECT_ERROR_HAS(({"--learning_rat", "1e-4"}), "unknown flag --learning_rat; did you mean --learning_rate?");
  EXPECT_ERROR_HAS(({"--lora_rank", "8"}), "did you mean --lora_r?");  // not --local_rank: longer shared prefix
  EXPECT_ERROR_HAS(({"--per_device_batch_size", "8"}), "did you mean --per_device_eval_batch_size?");
  // FastChat#2943: the flag users reach for first
  EXPECT_ERROR_HAS(({"--evaluation_data_file", "e.json"}), "did you mean --eval_data_path?");
  std::string far = error_for({"--completely_unrelated_option", "1"});
  EXPECT_NE(far.find("unknown flag --completely_unrelated_option"), std::string::npos) << far;
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
}

TEST(TrainArgsErrors, MissingValue) {
  EXPECT_ERROR_HAS(({"--learning_rate"}), "--learning_rate: needs a value");
  EXPECT_ERROR_HAS(({"--learning_rate", "--bf16"}), "--learning_rate: needs a value");
  EXPECT_ERROR_HAS(({"--lora_target_modules"}), "--lora_target_modules: needs a value");
}

TEST(TrainArgsErrors, BadNumbers) {
  EXPECT_ERROR_HAS(({"--learning_rate", "fast"}), "--learning_rate: 'fast' is not a number");
  EXPECT_ERROR_HAS(({"--lora_r", "8.5"}), "--lora_r: '8.5' is not an integer");
  EXPECT_ERROR_HAS(({"--max_steps", "1e3"}), "--max_steps: '1e3' is not an integer");
}

TEST(TrainArgsErrors, BadBool) {
  EXPECT_ERROR_HAS(({"--bf16", "maybe"}), "--bf16: 'maybe' is not a bool");
}

TEST(TrainArgsErrors, ExtraValue) {
  EXPECT_ERROR_HAS(({"--learning_rate", "2e-5", "3e-5"}), "unexpected argument '3e-5' after --learning_rate");
  EXPECT_ERROR_HAS(({"train"}), "unexpected argument 'train'");
}

TEST(TrainArgsErrors, Bf16AndFp16) {
  EXPECT_ERROR_HAS(({"--bf16", "True", "--fp16", "True"}), "--bf16/--fp16: both are True");
}

TEST(TrainArgsErrors, OutOfRange) {
  EXPECT_ERROR_HAS(({"--lora_r", "0"}), "--lora_r: 0 is out of range: must be >= 1");
  EXPECT_ERROR_HAS(({"--learning_rate", "0"}), "--learning_rate: 0 is out of range: must be > 0");
  EXPECT_ERROR_HAS(({"--learning_rate", "-1e-4"}), "--learning_rate: -1e-04 is out of range");
  EXPECT_ERROR_HAS(({"--per_device_train_batch_size", "0"}), "--per_device_train_batch_size: 0 is out of range");
  EXPECT_ERROR_HAS(({"--gradient_accumulation_steps", "0"}), "--gradient_accumulation_steps: 0 is out of range");
  EXPECT_ERROR_HAS(({"--lora_dropout", "1"}), "--lora_dropout: 1 is out of range: must be in [0, 1)");
  EXPECT_ERROR_HAS(({"--warmup_ratio", "1.5"}), "--warmup_ratio: 1.5 is out of range: must be in [0, 1]");
  EXPECT_ERROR_HAS(({"--adam_beta2", "1"}), "--adam_beta2: 1 is out of range");
  EXPECT_ERROR_HAS(({"--model_max_length", "1"}), "--model_max_length: 1 is out of range");
  EXPECT_ERROR_HAS(({"--num_train_epochs", "0"}), "--num_train_epochs: 0 is out of range");
  EXPECT_EQ(error_for({"--num_train_epochs", "0", "--max_steps", "10"}), "<parsed>");  // max_steps overrides
}

TEST(TrainArgsErrors, IntervalSteps) {
  EXPECT_ERROR_HAS(({"--logging_steps", "2.5"}), "--logging_steps: 2.5 is out of range: must be a whole number");
  EXPECT_ERROR_HAS(({"--save_steps", "0"}), "--save_steps: 0 is out of range: must be > 0");
  EXPECT_EQ(error_for({"--save_steps", "0", "--save_strategy", "no"}), "<parsed>");
  EXPECT_EQ(error_for({"--logging_steps", "0.1"}), "<parsed>");  // a fraction of the total steps
}

TEST(TrainArgsErrors, MissingRequired) {
  EXPECT_ERROR_HAS(({"--data_path", "d", "--output_dir", "o"}, false), "--model_name_or_path: is required");
  EXPECT_ERROR_HAS(({"--model_name_or_path", "m", "--output_dir", "o"}, false), "--data_path: is required");
  EXPECT_ERROR_HAS(({"--model_name_or_path", "m", "--data_path", "d"}, false), "--output_dir: is required");
}

TEST(TrainArgsErrors, RefusedChoices) {
  EXPECT_ERROR_HAS(({"--lr_scheduler_type", "polynomial"}), "--lr_scheduler_type: 'polynomial' is not supported");
  EXPECT_ERROR_HAS(({"--optim", "adafactor"}), "--optim: 'adafactor' is not supported");
  EXPECT_EQ(parse_with_required({"--optim", "adamw_hf"}).optim, "adamw_hf");
  EXPECT_ERROR_HAS(({"--report_to", "wandb"}), "--report_to: 'wandb' is not available");
  EXPECT_EQ(error_for({"--report_to", "none"}), "<parsed>");
  EXPECT_ERROR_HAS(({"--lora_bias", "some"}), "--lora_bias: 'some' is not supported");
  EXPECT_ERROR_HAS(({"--padding_side", "left"}), "--padding_side: 'left' is not supported");
  EXPECT_ERROR_HAS(({"--save_strategy", "best"}), "--save_strategy: 'best' is not supported");
}

TEST(TrainArgsErrors, LoraTargetModules) {
  EXPECT_ERROR_HAS(({"--lora_target_modules", "q_proj,v_proj"}),
                   "separate names with spaces: --lora_target_modules q_proj v_proj");
  EXPECT_ERROR_HAS(({"--lora_target_modules", "q_proj", "qkv_proj"}), "'qkv_proj' is not a LLaMA projection name");
  EXPECT_EQ(parse_with_required({"--lora_target_modules", "gate_proj", "up_proj", "down_proj", "lm_head"})
                .lora_target_modules.size(),
            4u);
}

// scripts/train_lora.sh evaluates every 100 steps without an eval set; HF stops at step 100, we stop now.
TEST(TrainArgsErrors, EvaluationWithoutEvalData) {
  EXPECT_ERROR_HAS(({"--evaluation_strategy", "steps", "--eval_steps", "100"}),
                   "--evaluation_strategy: steps needs --eval_data_path");
}

TEST(TrainArgs, HelpListsGroupsFlagsAndDefaults) {
  std::string help = train_args_help();
  for (const char* group : {"\nmodel:", "\ndata:", "\nLoRA:", "\ntraining:", "\nprecision / distributed:",
                            "\nlogging / saving / evaluation:", "\nzerolora extras:"})
    EXPECT_NE(help.find(group), std::string::npos) << group;
  for (const char* fragment :
       {"--learning_rate FLOAT", "[default: 5e-05]", "--lora_target_modules NAME...", "[default: q_proj v_proj]",
        "--evaluation_strategy {no,steps,epoch} (or --eval_strategy)", "--model_max_length INT",
        "[default: 512]", "--optim {adamw_torch,adamw_hf,adamw_torch_fused}", "--num_threads INT",
        "--tf32 BOOL", "[default: None]", "--resume_from_checkpoint BOOL|DIR", "[required]"})
    EXPECT_NE(help.find(fragment), std::string::npos) << fragment;
  // every flag FastChat/HF users pass (and ours) is documented and known to the parser
  for (const char* name :
       {"model_name_or_path", "trust_remote_code", "padding_side", "data_path", "eval_data_path", "lazy_preprocess",
        "output_dir", "overwrite_output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "adam_beta1",
        "adam_beta2", "adam_epsilon", "max_grad_norm", "warmup_ratio", "warmup_steps", "lr_scheduler_type",
        "logging_steps", "logging_strategy", "save_strategy", "save_steps", "save_total_limit",
        "evaluation_strategy", "eval_steps", "model_max_length", "lora_r", "lora_alpha", "lora_dropout",
        "lora_target_modules", "lora_weight_path", "lora_bias", "q_lora", "gradient_checkpointing", "bf16", "fp16",
        "tf32", "flash_attn", "deepspeed", "seed", "resume_from_checkpoint", "report_to", "local_rank", "optim",
        "dataloader_num_workers", "cache_dir", "conv_template", "packing", "padding", "use_rslora",
        "token_weighted_loss", "eval_token_weighted_loss", "strict_data", "num_threads", "metrics_file"}) {
    EXPECT_NE(help.find("  --" + std::string(name) + " "), std::string::npos) << name;
    std::string msg = error_for({"--" + std::string(name) + "=1"});
    EXPECT_EQ(msg.find("unknown flag"), std::string::npos) << msg;
  }
}

// --lora_weight_path: an adapter_config.json as PEFT writes it, target_modules in a set's arbitrary order.
namespace {

std::string peft_adapter_dir(const TempDir& dir, int64_t r, int64_t alpha, bool rslora,
                             const std::string& targets_json) {
  write_file(dir / "adapter_config.json",
             "{\"peft_type\": \"LORA\", \"r\": " + std::to_string(r) + ", \"lora_alpha\": " +
                 std::to_string(alpha) + ", \"lora_dropout\": 0.1, \"bias\": \"none\", " +
                 (rslora ? "\"use_rslora\": true, " : "") + "\"target_modules\": " + targets_json +
                 ", \"task_type\": \"CAUSAL_LM\"}");
  return dir.str();
}

}  // namespace

TEST(TrainArgs, LoraWeightPathTakesTheAdaptersSettings) {
  TempDir dir;
  const std::string adapter = peft_adapter_dir(dir, 4, 32, true, R"(["v_proj", "o_proj", "q_proj"])");
  TrainArgs a = parse_with_required({"--lora_weight_path", adapter});
  EXPECT_EQ(a.lora_r, 4);
  EXPECT_EQ(a.lora_alpha, 32);  // was: the default 16, silently
  EXPECT_TRUE(a.use_rslora);
  EXPECT_EQ(a.lora_target_modules, (std::vector<std::string>{"v_proj", "o_proj", "q_proj"}));
  EXPECT_DOUBLE_EQ(a.lora_dropout, 0.05);  // a training setting: the flag's (PEFT's adapters keep theirs too)
  EXPECT_TRUE(has_note(a, "r 4, lora_alpha 32, use_rslora True, target_modules v_proj o_proj q_proj taken from"));
}

TEST(TrainArgs, LoraWeightPathTargetsMatchAsSets) {
  TempDir dir;
  const std::string adapter = peft_adapter_dir(dir, 8, 16, false, R"(["v_proj", "down_proj", "q_proj"])");
  TrainArgs a = parse_with_required({"--lora_weight_path", adapter, "--lora_target_modules", "q_proj", "v_proj",
                                     "down_proj", "--lora_r", "8", "--lora_alpha", "16"});
  EXPECT_EQ(std::set<std::string>(a.lora_target_modules.begin(), a.lora_target_modules.end()),
            (std::set<std::string>{"q_proj", "v_proj", "down_proj"}));
  EXPECT_FALSE(has_note(a, "--lora_weight_path"));  // nothing changed
}

TEST(TrainArgsErrors, LoraWeightPathDisagreeingFlagNamesBothValues) {
  TempDir dir;
  const std::string adapter = peft_adapter_dir(dir, 4, 32, false, R"(["v_proj", "q_proj"])");
  EXPECT_ERROR_HAS(({"--lora_weight_path", adapter, "--lora_alpha", "16"}),
                   "--lora_alpha: is 16 but the adapter in --lora_weight_path has 32");
  EXPECT_ERROR_HAS(({"--lora_weight_path", adapter, "--lora_alpha", "16"}),
                   "(fix: drop --lora_alpha (the adapter's value is used) or pass --lora_alpha 32)");
  EXPECT_ERROR_HAS(({"--lora_weight_path", adapter, "--lora_r", "8"}),
                   "--lora_r: is 8 but the adapter in --lora_weight_path has 4");
  EXPECT_ERROR_HAS(({"--lora_weight_path", adapter, "--use_rslora", "True"}),
                   "--use_rslora: is True but the adapter in --lora_weight_path has False");
  EXPECT_ERROR_HAS(({"--lora_weight_path", adapter, "--lora_target_modules", "q_proj", "k_proj"}),
                   "--lora_target_modules: is q_proj k_proj but the adapter in --lora_weight_path has v_proj q_proj");
  // the same values given explicitly are fine
  EXPECT_EQ(error_for({"--lora_weight_path", adapter, "--lora_alpha", "32", "--lora_r", "4"}), "<parsed>");
}

TEST(TrainArgsErrors, LoraWeightPathWithoutAdapterConfig) {
  TempDir dir;
  EXPECT_ERROR_HAS(({"--lora_weight_path", dir.str()}), "adapter_config.json: not found");
  // a command-line error (every rank finds the same): printed once under mpirun
  auto argv = required_flags();
  argv.insert(argv.end(), {"--lora_weight_path", dir.str()});
  EXPECT_THROW(parse_train_args(argv), FlagError);
}

// --lora_weight_path: the adapter's PEFT `bias` is taken too (an adapter with bias "all" holds the trained biases,
// and a layout without bias slots would have no place for them); a --lora_bias that disagrees is an error.
TEST(TrainArgs, LoraWeightPathTakesTheAdaptersBias) {
  TempDir dir;
  write_file(dir / "adapter_config.json",
             R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "all", "target_modules": ["q_proj", "v_proj"]})");
  TrainArgs a = parse_with_required({"--lora_weight_path", dir.str()});
  EXPECT_EQ(a.lora_bias, LoraBias::All);
  EXPECT_TRUE(has_note(a, "bias all"));
  EXPECT_ERROR_HAS(({"--lora_weight_path", dir.str(), "--lora_bias", "none"}),
                   "--lora_bias: is none but the adapter in --lora_weight_path has all");
}
