// Subcommands of the zerolora binary. Each takes argv with argv[0] = the subcommand name and returns
// the process exit code; errors a user can fix are thrown as core::Error and printed by main.
#pragma once

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

}  // namespace zerolora::cli

// Parses a CLI11 app; on --help or a parse error prints CLI11's message and returns its exit code from the
// calling command.
#define ZL_PARSE(app, argc, argv)            \
  try {                                      \
    (app).parse((argc), (argv));             \
  } catch (const CLI::ParseError& e) {       \
    return (app).exit(e);                    \
  }
