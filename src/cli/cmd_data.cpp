// zerolora data inspect: how a conversation file is tokenised and which tokens are trained.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/inspect.h"
#include "tokenizer/tokenizer.h"

namespace zerolora::cli {

int cmd_data(int argc, char** argv) {
  std::string data_path, model_dir, conv_template = "vicuna_v1.1", out_path, color = "auto";
  int64_t model_max_length = 512, show = 3;
  bool strict = false;
  train::FlagSet fs("zerolora data inspect",
                    "usage: zerolora data inspect --data_path FILE --model_name_or_path DIR [flags]\n"
                    "Tokenise and mask a conversation file as the trainer does; print samples with the trained "
                    "tokens\nhighlighted, the samples that lose training signal and why, and the totals.");
  fs.add(train::string_flag("data_path", data_path, "FILE", "conversation file (FastChat JSON or JSONL)"))
      .mark_required("data.json");
  fs.add(train::model_name_or_path_flag(model_dir).with_help("model folder with tokenizer.model or tokenizer.json"));
  fs.add(train::conv_template_flag(conv_template));
  fs.add(train::model_max_length_flag(model_max_length).with_help("truncate samples to this many tokens"));
  fs.add(train::string_flag("out", out_path, "FILE", "write every sample's input_ids and labels here as JSONL"));
  fs.add(train::int_flag("show", show, "number of samples to print"));
  fs.add(train::choice_flag("color", color, {"auto", "always", "never"},
                            "highlight with ANSI colours: auto (when stdout is a terminal), always, never"));
  fs.add(train::bool_flag("strict_data", strict, "stop at the first sample that would lose training signal"));
  // `zerolora data inspect ...`: inspect is the one subcommand
  const bool help_only = argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"));
  if (!help_only && (argc < 2 || std::strcmp(argv[1], "inspect") != 0))
    throw train::FlagError("zerolora data", argc < 2 ? "needs a subcommand" : "unknown subcommand '" +
                           std::string(argv[1]) + "'", "write zerolora data inspect --data_path FILE "
                           "--model_name_or_path DIR");
  if (!parse_flags(fs, help_only ? argc : argc - 1, help_only ? argv : argv + 1)) return 0;
  if (show < 0)
    throw train::FlagError("--show", std::to_string(show) + " is out of range: must be >= 0", "pass --show 3");

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
  iopt.show_samples = size_t(show);
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
