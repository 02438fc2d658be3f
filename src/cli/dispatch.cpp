// The command table and the dispatch from `zerolora <command> ...` to a subcommand, with the one place
// where errors become exit codes: a core::Error prints one line `error: ... (fix: ...)` and exits 1.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

namespace zerolora::cli {

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"demo", cmd_demo, "make a small model + synthetic data, fine-tune LoRA, generate (no downloads)"},
    {"train", cmd_train, "fine-tune LoRA adapters (FastChat train_lora.py flags; mpirun for ranks)"},
    {"eval", cmd_eval, "evaluation loss and perplexity of a base model plus an adapter"},
    {"generate", cmd_generate, "generate text with a base model and an optional adapter (KV cache)"},
    {"chat", cmd_chat, "chat with a model + adapter in its conversation template (stdin lines)"},
    {"merge", cmd_merge, "merge an adapter into the base weights: an HF model folder (apply_lora)"},
    {"data", cmd_data, "data inspect: tokenised samples, trained-token masks, dropped samples"},
    {"init-model", cmd_init_model, "write a random model folder in HF format (--preset, --out)"},
    {"inspect", cmd_inspect, "describe a model folder: architecture, parameters, memory estimate"},
    {"forward", cmd_forward, "run the model on token ids; print loss and next-token argmax"},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: zerolora <command> [flags]   (zerolora <command> --help for its flags)\n"
                   "       zerolora --version          (commit, build flags, CPU kernels in use, CUDA backend)\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.help);
}

}  // namespace

int run_command_line(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) return cmd_version(argc - 1, argv + 1);
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const core::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "internal error: %s\n", e.what());
      return 3;
    }
  }
  std::fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}

}  // namespace zerolora::cli
