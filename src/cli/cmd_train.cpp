// train and eval: FastChat/HF flag names (train/args.h), one process or mpirun ranks.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/comm.h"
#include "train/args.h"
#include "cli/demo.h"
#include "train/trainer.h"

namespace zerolora::cli {

namespace {

bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

}  // namespace

int cmd_train(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::printf("%s\nDistributed: mpirun -np N zerolora train ... [--deepspeed ds_config.json] (data parallel, "
                "ZeRO stages 0-3)\n", train::train_args_help().c_str());
    return 0;
  }
  train::TrainArgs args = train::parse_train_args(std::vector<std::string>(argv + 1, argv + argc));
  auto comm = dist::make_comm();
  train::run_training(args, *comm);
  return 0;
}

int cmd_eval(int argc, char** argv) {
  train::TrainArgs args;
  std::string adapter;
  train::FlagSet fs("zerolora eval",
                    "usage: zerolora eval --model_name_or_path DIR --eval_data_path FILE [--adapter DIR] [flags]\n"
                    "Evaluation loss (HF's eval_loss) and perplexity of a model plus an adapter on conversations, "
                    "with the\ntrain flags' names and meanings; mpirun -np N splits the batches over ranks.");
  train::add_train_flags(fs, args,
                         {"model_name_or_path", "data_path", "eval_data_path", "lazy_preprocess", "model_max_length",
                          "q_lora", "per_device_eval_batch_size", "bf16", "conv_template", "padding",
                          "eval_token_weighted_loss", "strict_data", "num_threads", "device"});
  fs.add(train::adapter_flag(adapter)).in_group("model");
  train::Flag& data = fs.flag("data_path");
  data.required = false;
  data.help = "conversations to evaluate when --eval_data_path is not given";
  data.shown_default = "\"\"";
  if (!parse_flags(fs, argc, argv)) return 0;
  train::validate_eval_args(args);
  auto comm = dist::make_comm();
  train::run_evaluation(args, adapter, *comm);
  return 0;
}

int cmd_demo(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    // the demo's own defaults; every other flag goes to its `zerolora train` (parsed there)
    std::string output_dir = "zerolora-demo", model_dir, data_path;
    int64_t max_steps = 500;
    train::FlagSet fs("zerolora demo",
                      "usage: zerolora demo [--output_dir DIR] [--model_name_or_path DIR] [--data_path FILE] "
                      "[--max_steps N] [any train flag]\n"
                      "Makes a small random model and synthetic conversations (or uses yours), scores held-out "
                      "questions,\nfine-tunes LoRA with zerolora train, scores them again.");
    fs.add(train::string_flag("output_dir", output_dir, "DIR", "where the model, data and run go"));
    fs.add(train::string_flag("model_name_or_path", model_dir, "DIR",
                              "an HF model folder instead of the demo's random model"));
    fs.add(train::string_flag("data_path", data_path, "FILE",
                              "a conversation file instead of the synthetic set (no score then)"));
    fs.add(train::int_flag("max_steps", max_steps, "optimizer steps"));
    std::printf("%s\nAny other zerolora train flag is passed to the training run (zerolora train --help).\n",
                fs.help().c_str());
    return 0;
  }
  return run_demo(std::vector<std::string>(argv + 1, argv + argc));
}

}  // namespace zerolora::cli
