// zerolora command line: thin; the command table and the dispatch live in cli/dispatch.cpp, each subcommand
// parses its flags and calls the library.
#include <cstring>

#include "cli/commands.h"
#include "core/runtime.h"
#include "train/stop_signals.h"

int main(int argc, char** argv) {
  // First, before any library starts a thread: every thread inherits the blocked mask, and one thread takes
  // the signals (no asynchronous handler; see train/stop_signals.h for why).
  zerolora::train::block_stop_signals();
  // train and demo save a checkpoint and stop on the first signal; every other command ends as by default
  const bool trains = argc >= 2 && (!std::strcmp(argv[1], "train") || !std::strcmp(argv[1], "demo"));
  zerolora::train::take_stop_signals(trains);
  zerolora::core::return_large_frees_to_system();
  return zerolora::cli::run_command_line(argc, argv);
}
