// Subcommands of the zerolora binary. Each takes argv with argv[0] = the subcommand name and returns
// the process exit code; errors a user can fix are thrown as core::Error and printed by main.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/flags.h"

namespace zerolora::cli {

int cmd_init_model(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_forward(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_data(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_merge(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_version(int argc, char** argv);  // zerolora --version

// `zerolora <command> ...`: finds the command, runs it, turns errors into one line and an exit code.
int run_command_line(int argc, char** argv);

// Every command's --help as Markdown: docs/FLAGS.md (`zerolora help-markdown > docs/FLAGS.md`).
int cmd_help_markdown(int argc, char** argv);

// Parses a command's flags (argv[0] = the command). --help prints flags.help() on stdout and returns false
// (the command then exits 0); deprecated spellings print their note on stderr.
bool parse_flags(train::FlagSet& flags, int argc, char** argv);

// The flags the model-running commands (forward, merge, generate, chat, inspect) share, with their help.
void add_threads_flag(train::FlagSet& flags, int64_t& threads);
// --device auto|cpu|cuda for generate, chat and merge (model::open_generation_device reads it); `what` names the
// work in the help ("generation").
void add_device_flag(train::FlagSet& flags, std::string& device, const std::string& what);

// "1,403,407" -> token ids; anything else is a FlagError naming flag.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag);

}  // namespace zerolora::cli

