// train and eval: FastChat/HF flag names (train/args.h), one process or mpirun ranks.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/comm.h"
#include "train/args.h"
#include "train/demo.h"
#include "train/trainer.h"

namespace zerolora::cli {

static bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

int cmd_train(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::printf("%s\nDistributed: mpirun -np N zerolora train ... [--deepspeed ds_config.json] (data parallel, "
                "ZeRO stages 0-3)\n", train::train_args_help().c_str());
    return 0;
  }
  train::TrainArgs args = train::parse_train_args(std::vector<std::string>(argv + 1, argv + argc));
  auto comm = dist::make_comm();
  train::TrainResult r = train::run_training(args, *comm);
  return r.interrupted ? 0 : 0;
}

int cmd_eval(int argc, char** argv) {
  std::vector<std::string> rest;
  std::string adapter;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--adapter") && i + 1 < argc) {
      adapter = argv[++i];
    } else if (!std::strncmp(argv[i], "--adapter=", 10)) {
      adapter = argv[i] + 10;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (wants_help(argc, argv)) {
    std::printf("usage: zerolora eval --model_name_or_path DIR (--eval_data_path FILE | --data_path FILE) "
                "[--adapter DIR] [train flags: --model_max_length, --per_device_eval_batch_size, --conv_template, --bf16 ...]\n");
    return 0;
  }
  // eval reuses the train flag parser; output_dir is not needed
  bool has_out = false, has_data = false;
  for (const auto& r : rest) {
    has_out = has_out || r.rfind("--output_dir", 0) == 0;
    has_data = has_data || r.rfind("--data_path", 0) == 0;
  }
  if (!has_out) rest.insert(rest.end(), {"--output_dir", "/nonexistent-eval-output"});
  if (!has_data) {
    for (size_t i = 0; i + 1 < rest.size(); ++i)
      if (rest[i] == "--eval_data_path") rest.insert(rest.end(), {"--data_path", rest[i + 1]});
  }
  train::TrainArgs args = train::parse_train_args(rest);
  auto comm = dist::make_comm();
  train::run_evaluation(args, adapter, *comm);
  return 0;
}

int cmd_demo(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::printf("usage: zerolora demo [--output_dir DIR] [--model_name_or_path DIR] [--data_path FILE] "
                "[--max_steps N] [any train flag]\n");
    return 0;
  }
  return train::run_demo(std::vector<std::string>(argv + 1, argv + argc));
}

}  // namespace zerolora::cli
