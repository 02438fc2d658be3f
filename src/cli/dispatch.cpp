// The command table and the dispatch from `zerolora <command> ...` to a subcommand, with the one place where
// errors become exit codes: a core::Error prints one line `error: ... (fix: ...)` and exits 1 (a flag error
// only on rank 0 of an mpirun launch, so the job shows it once; the other ranks exit 1 silently).
#include <unistd.h>

#include <array>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

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
    {"forward", cmd_forward, "run the model (and an adapter) on token ids; print loss and next-token argmax"},
    {"help-markdown", cmd_help_markdown, "every command's --help as Markdown (regenerates docs/FLAGS.md)"},
};

std::string usage() {
  std::string s =
      "usage: zerolora <command> [flags]   (zerolora <command> --help for its flags)\n"
      "       zerolora --version          (commit, build flags, CPU kernels in use, CUDA backend)\n"
      "Every command takes --flag value (or --flag=value); a model folder is --model_name_or_path DIR, an adapter "
      "--adapter DIR.\n\ncommands:\n";
  char line[256];
  for (const auto& c : kCommands) {
    std::snprintf(line, sizeof line, "  %-14s %s\n", c.name, c.help);
    s += line;
  }
  return s;
}

// Runs one command; every error a user can fix becomes one line and exit status 1.
int run_guarded(int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const train::FlagError& e) {
    if (train::launcher_rank() == 0) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
    // Every rank parses the same command line, so rank 0 prints this error too. mpirun aborts the job when the
    // first rank exits non-zero: a silent rank that exited first could get rank 0 killed before it prints. Wait
    // for that (rank 0's exit ends the job and this process with it); 2 s bounds a slow rank 0.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    return 1;
  } catch (const core::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 3;
  }
}

int no_command(int argc, char** argv) {
  if (argc < 1)
    throw train::FlagError("zerolora", "no command given", "write zerolora <command> [flags]; zerolora --help lists them");
  throw train::FlagError("zerolora", "unknown command '" + std::string(argv[0]) + "'",
                         "zerolora --help lists the commands");
}

std::string run_and_capture(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) throw core::Error(command, "could not be started");
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  if (status != 0) throw core::Error(command, "failed with status " + std::to_string(status));
  return out;
}

}  // namespace

bool parse_flags(train::FlagSet& flags, int argc, char** argv) {
  if (!flags.parse(argc, argv)) {
    std::fputs(flags.help().c_str(), stdout);
    return false;
  }
  flags.print_notes();
  return true;
}

void add_threads_flag(train::FlagSet& flags, int64_t& threads) {
  flags.add(train::num_threads_flag(threads).with_help(
      "threads, 0 = OMP_NUM_THREADS if set, else the cores this process may run on"));
}

void add_device_flag(train::FlagSet& flags, std::string& device, const std::string& what) {
  flags.add(train::choice_flag("device", device, {"auto", "cpu", "cuda"},
                               "where " + what + " runs: cuda (GPU 0), cpu, or auto = cuda when a GPU is visible and "
                               "the build has CUDA"));
}

std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string tok = text.substr(pos, end - pos);
    try {
      size_t used = 0;
      const long v = std::stol(tok, &used);
      if (used != tok.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(tok);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      throw train::FlagError(flag, "'" + tok + "' is not a token id", "give comma-separated token ids, e.g. 1,2,3");
    }
    pos = end + 1;
  }
  return ids;
}

int cmd_help_markdown(int argc, char** argv) {
  train::FlagSet fs("zerolora help-markdown",
                    "usage: zerolora help-markdown > docs/FLAGS.md\n"
                    "Every command's --help as one Markdown page (tests/cli checks docs/FLAGS.md against --help).");
  if (!parse_flags(fs, argc, argv)) return 0;
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) throw core::Error("/proc/self/exe", "cannot be read", "run zerolora <command> --help instead");
  self[len] = '\0';
  std::string md =
      "# zerolora flags\n\n"
      "Generated by `zerolora help-markdown > docs/FLAGS.md` from every command's `--help`; the test\n"
      "`CliFlags.FlagsMdIsEveryCommandsHelp` (tests/cli) fails when this page and a `--help` differ.\n"
      "Every command takes `--flag value` or `--flag=value`; bools take True/False (a bare `--flag` is True); dashes\n"
      "in a name work like underscores. An error is one line, `error: ... (fix: ...)`, and exit status 1.\n\n"
      "## zerolora\n\n```\n" + usage() + "```\n";
  for (const auto& c : kCommands) {
    if (!std::strcmp(c.name, "help-markdown")) continue;
    md += "\n## zerolora " + std::string(c.name) + "\n\n```\n" +
          run_and_capture("'" + std::string(self) + "' " + c.name + " --help") + "```\n";
  }
  std::fputs(md.c_str(), stdout);
  return 0;
}

int run_command_line(int argc, char** argv) {
  if (argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help"))) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (argc >= 2 && (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")))
    return run_guarded(cmd_version, argc - 1, argv + 1);
  if (argc >= 2)
    for (const auto& c : kCommands)
      if (!std::strcmp(argv[1], c.name)) return run_guarded(c.run, argc - 1, argv + 1);
  return run_guarded(no_command, argc - 1, argv + 1);
}

}  // namespace zerolora::cli
