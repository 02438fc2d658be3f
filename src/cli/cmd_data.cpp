// zerolora data inspect: how a conversation file is tokenised and which tokens are trained.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/inspect.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

int cmd_data(int argc, char** argv) {
  CLI::App app{"Inspect conversation data as the trainer sees it: tokens, trained tokens, masked-out samples"};
  app.require_subcommand(1);
  CLI::App* inspect = app.add_subcommand(
      "inspect", "tokenise and mask a data file; print samples with trained tokens highlighted and the totals");

  std::string data_path, model_dir, conv_template = "vicuna_v1.1", out_path, color = "auto";
  int64_t model_max_length = 512;
  size_t show = 3;
  bool strict = false;
  inspect->add_option("--data_path", data_path, "conversation file (FastChat JSON or JSONL)")->required();
  inspect->add_option("--model_name_or_path", model_dir, "model folder with tokenizer.model or tokenizer.json")
      ->required();
  inspect->add_option("--conv_template", conv_template, "vicuna_v1.1, llama-2, llama-3, chatml or mistral")
      ->capture_default_str();
  inspect->add_option("--model_max_length", model_max_length, "truncate samples to this many tokens")
      ->capture_default_str();
  inspect->add_option("--out", out_path, "write every sample's input_ids and labels here as JSONL");
  inspect->add_option("--show", show, "number of samples to print")->capture_default_str();
  inspect->add_option("--color", color, "highlight with ANSI colours: auto (when stdout is a terminal), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  inspect->add_flag("--strict_data", strict, "stop at the first sample that would lose training signal");

  ZL_PARSE(app, argc, argv);

  const auto tok = tokenizer::load_tokenizer(model_dir);
  data::DataOptions opt;
  opt.conv_template = conv_template;
  opt.model_max_length = model_max_length;
  opt.strict = strict;
  opt.lazy = true;  // tokenised sample by sample while the JSONL is written
  data::Dataset ds = data::Dataset::load(data_path, *tok, opt);

  std::ofstream jsonl;
  if (!out_path.empty()) {
    jsonl.open(out_path, std::ios::binary | std::ios::trunc);
    core::check(jsonl.is_open(), out_path, "cannot be written", "check --out's folder and permissions");
  }
  data::InspectOptions iopt;
  iopt.show_samples = show;
  iopt.ansi = color == "always" || (color == "auto" && isatty(fileno(stdout)));
  data::inspect_dataset(ds, *tok, iopt, std::cout, out_path.empty() ? nullptr : &jsonl);
  if (!out_path.empty()) {
    jsonl.close();
    core::check(!jsonl.fail(), out_path, "could not be written completely", "check free disk space");
    std::cout << "wrote " << ds.size() << " samples to " << out_path << "\n";
  }
  return 0;
}

}  // namespace zerolora::cli
