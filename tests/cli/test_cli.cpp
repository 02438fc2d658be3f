// The zerolora command line as a user meets it: one flag convention for every command, errors as one line
// with one exit status (once per mpirun job), docs/FLAGS.md equal to every --help, forward/merge/generate/chat/
// inspect with --model_name_or_path and --adapter, and --lora_weight_path adapters that PEFT wrote.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/runtime.h"
#include "e2e/e2e_util.h"
#include "model/adapter_io.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/random_model.h"
#include "model/weights.h"
#include "test_util.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

std::string zl(const std::string& args) { return zerolora_binary() + " " + args; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The commands `zerolora --help` lists (the two-space indented lines under "commands:").
std::vector<std::string> listed_commands() {
  std::string out;
  EXPECT_EQ(run_command(zl("--help"), &out), 0) << out;
  std::vector<std::string> names;
  bool in_list = false;
  for (const auto& line : lines_of(out)) {
    if (line == "commands:") in_list = true;
    else if (in_list && line.rfind("  ", 0) == 0) names.push_back(line.substr(2, line.find(' ', 2) - 2));
  }
  return names;
}

// A tiny random model and an adapter on it with B != 0 (so it changes the outputs), written as PEFT does, with
// target_modules in a set's arbitrary order.
struct ModelAndAdapter {
  TempDir dir;
  std::string model = (dir / "model").string(), adapter = (dir / "adapter").string();
  model::LoraConfig lora;
  ModelAndAdapter() {
    model::RandomInit init;
    init.seed = 5;
    model::write_random_model(model, model::preset_config("tiny"), init, core::DType::F32);
    lora.r = 4, lora.alpha = 32, lora.target_modules = {"v_proj", "q_proj", "down_proj"};
    const io::HfConfig c = io::load_hf_config(model + "/config.json");
    model::LoraLayout layout(c, lora);
    std::vector<float> params(size_t(layout.numel()));
    model::init_lora_params(layout, params.data(), 11);
    for (const auto& s : layout.slots())
      for (int64_t i = 0; i < s.out * s.r; ++i) params[size_t(s.b_offset + i)] = 0.02f * float((i * 7) % 11 - 5);
    model::save_peft_adapter(adapter, layout, params.data(), model);
  }
};

// "loss X over N tokens" of `zerolora forward`.
double loss_of(const std::string& out) {
  const auto p = out.find("loss ");
  EXPECT_NE(p, std::string::npos) << out;
  return p == std::string::npos ? -1 : std::stod(out.substr(p + 5));
}

}  // namespace

// docs/FLAGS.md is `zerolora help-markdown`: every command's --help verbatim, checked here command by command.
TEST(CliFlags, FlagsMdIsEveryCommandsHelp) {
  const std::string md = read_file(fs::path(ZEROLORA_SOURCE_DIR) / "docs" / "FLAGS.md");
  ASSERT_FALSE(md.empty()) << "docs/FLAGS.md is missing";
  // "## zerolora <command>" then a ``` block
  std::map<std::string, std::string> blocks;
  for (size_t pos = md.find("\n## zerolora"); pos != std::string::npos; pos = md.find("\n## zerolora", pos + 1)) {
    const size_t eol = md.find('\n', pos + 1);
    const std::string title = md.substr(pos + 4, eol - pos - 4);  // "zerolora train"
    const size_t open = md.find("```\n", eol), close = md.find("\n```\n", open);
    ASSERT_NE(close, std::string::npos) << title;
    blocks[title] = md.substr(open + 4, close + 1 - open - 4);
  }
  const auto fix = "\nregenerate it: ./build/zerolora help-markdown > docs/FLAGS.md";
  std::string out;
  ASSERT_EQ(run_command(zl("--help"), &out), 0);
  EXPECT_EQ(blocks["zerolora"], out) << "the command list" << fix;
  const auto commands = listed_commands();
  ASSERT_GE(commands.size(), 10u);
  for (const auto& c : commands) {
    if (c == "help-markdown") continue;
    ASSERT_TRUE(blocks.count("zerolora " + c)) << "docs/FLAGS.md has no section for " << c << fix;
    ASSERT_EQ(run_command(zl(c + " --help"), &out), 0) << out;
    EXPECT_EQ(blocks["zerolora " + c], out) << "zerolora " << c << " --help differs from docs/FLAGS.md" << fix;
  }
  // and help-markdown writes exactly the page
  ASSERT_EQ(run_command(zl("help-markdown"), &out), 0);
  EXPECT_EQ(out, md) << fix;
}

// Every command: --help exits 0; a bad flag is one line `error: ... (fix: ...)` and exit status 1 (CLI11 printed
// several lines and exited 106 for generate, chat, merge, data, init-model, inspect and forward).
TEST(CliErrors, OneLineAndExitStatusOneForEveryCommand) {
  std::string out;
  for (const auto& c : listed_commands()) {
    EXPECT_EQ(run_command(zl(c + " --help"), &out), 0) << c << "\n" << out;
    if (c == "demo") continue;  // its extra flags go to its training run (checked through train)
    const std::string args = c == "data" ? "data inspect --no_such_flag 1" : c + " --no_such_flag 1";
    EXPECT_EQ(run_command(zl(args), &out), 1) << args << "\n" << out;
    const auto lines = lines_of(out);
    ASSERT_EQ(lines.size(), 1u) << args << "\n" << out;
    EXPECT_EQ(lines[0].rfind("error: zerolora ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find("unknown flag --no_such_flag"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find("(fix: "), std::string::npos) << lines[0];
  }
  for (const std::string& args : {std::string("no-such-command"), std::string(""), std::string("data"),
                                   std::string("generate --model_name_or_path m"), std::string("merge --out o"),
                                   std::string("forward --model_name_or_path m --ids 1,x"),
                                   std::string("init-model --out o --preset huge")}) {
    EXPECT_EQ(run_command(zl(args), &out), 1) << args << "\n" << out;
    ASSERT_EQ(lines_of(out).size(), 1u) << args << "\n" << out;
    EXPECT_EQ(out.rfind("error: ", 0), 0u) << out;
    EXPECT_NE(out.find("(fix: "), std::string::npos) << out;
  }
}

// Under mpirun every rank parses the same flags: the error is printed once (rank 0), every rank exits 1.
TEST(CliErrors, FlagErrorPrintedOnceUnderMpirun) {
  std::string out;
  EXPECT_EQ(run_command("OMPI_COMM_WORLD_RANK=1 " + zl("train --no_such_flag 1"), &out), 1);
  EXPECT_EQ(out, "") << "a rank other than 0 prints nothing";
  EXPECT_EQ(run_command("PMIX_RANK=0 " + zl("eval --no_such_flag 1"), &out), 1);
  EXPECT_EQ(lines_of(out).size(), 1u) << out;
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "no mpirun";
  for (const std::string& args : {std::string("train --learning_rat 1e-4"), std::string("eval --bogus")}) {
    run_command("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 3 " + zl(args),
                &out);
    size_t errors = 0;
    for (const auto& line : lines_of(out)) errors += line.rfind("error: ", 0) == 0;
    EXPECT_EQ(errors, 1u) << args << "\n" << out;
  }
}

// forward takes --adapter (it had none): the loss is the model's with the adapter applied.
TEST(CliConvention, ForwardTakesAnAdapter) {
  ModelAndAdapter m;
  const std::string ids = "1,17,42,99,7,3";
  std::string base_out, out;
  ASSERT_EQ(run_command(zl("forward --model_name_or_path " + m.model + " --ids " + ids + " --num_threads 1"),
                        &base_out), 0) << base_out;
  ASSERT_EQ(run_command(zl("forward --model_name_or_path " + m.model + " --adapter " + m.adapter + " --ids " + ids +
                           " --num_threads 1"), &out), 0) << out;
  // the same model pass in this process (one thread, as the binary): the binary prints 6 decimals, so the two
  // agree to 5e-7 of rounding plus nothing else (same code, same summation order)
  core::set_num_threads(1);
  const model::LlamaWeights w = model::load_llama_weights(m.model, core::DType::F32, core::DType::F32);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(w.config, m.adapter);
  EXPECT_DOUBLE_EQ(adapter.layout->scale(), 32.0 / 4);
  model::LlamaModel<float> lm(w, adapter.layout.get());
  std::vector<int32_t> tokens = {1, 17, 42, 99, 7, 3}, labels = tokens;
  model::ModelInput in;
  in.B = 1, in.T = int64_t(tokens.size()), in.input_ids = tokens.data(), in.labels = labels.data();
  const auto r = lm.forward_backward(in, adapter.data(), nullptr, 1, 0);
  const double want = r.loss_sum / double(r.tokens);
  EXPECT_NEAR(loss_of(out), want, 1e-6) << out;
  EXPECT_GT(std::abs(loss_of(out) - loss_of(base_out)), 1e-3) << "the adapter changes the loss\n" << out << base_out;
}

// merge takes --model_name_or_path like every command; --base still works, with a one-line note.
TEST(CliConvention, MergeTakesModelNameOrPath) {
  ModelAndAdapter m;
  std::string out;
  const std::string merged = (m.dir / "merged").string(), merged_old = (m.dir / "merged_old").string();
  ASSERT_EQ(run_command(zl("merge --model_name_or_path " + m.model + " --adapter " + m.adapter + " --out " + merged),
                        &out), 0) << out;
  EXPECT_EQ(out.find("note:"), std::string::npos) << out;
  ASSERT_EQ(run_command(zl("merge --base " + m.model + " --adapter " + m.adapter + " --out " + merged_old), &out), 0)
      << out;
  EXPECT_NE(out.find("note: --base is the older name of --model_name_or_path; write --model_name_or_path"),
            std::string::npos) << out;
  // the merged model computes what base + adapter compute
  std::string merged_fwd, adapter_fwd;
  ASSERT_EQ(run_command(zl("forward --model_name_or_path " + merged + " --ids 5,6,7,8 --num_threads 1"), &merged_fwd), 0);
  ASSERT_EQ(run_command(zl("forward --model_name_or_path " + m.model + " --adapter " + m.adapter +
                           " --ids 5,6,7,8 --num_threads 1"), &adapter_fwd), 0);
  // W + s B A rounded once to f32 vs the unmerged sum: fp32 rounding of a tiny model, far below 1e-4 of the loss
  EXPECT_NEAR(loss_of(merged_fwd), loss_of(adapter_fwd), 1e-4 * loss_of(adapter_fwd));
}

// generate, chat, inspect and forward take --model_name_or_path; the older positional folder still works and
// says how to write it now.
TEST(CliConvention, ModelFolderIsAFlagEverywhere) {
  ModelAndAdapter m;
  std::string out;
  ASSERT_EQ(run_command(zl("inspect --model_name_or_path " + m.model), &out), 0) << out;
  EXPECT_EQ(out.find("note:"), std::string::npos) << out;
  ASSERT_EQ(run_command(zl("generate --model_name_or_path " + m.model + " --adapter " + m.adapter +
                           " --ids 1,2,3 --max_new_tokens 3"), &out), 0) << out;
  EXPECT_EQ(out.find("note:"), std::string::npos) << out;
  for (const std::string& args : {"inspect " + m.model, "generate " + m.model + " --ids 1,2 --max_new_tokens 2",
                                  "forward " + m.model + " --ids 1,2"}) {
    ASSERT_EQ(run_command(zl(args), &out), 0) << args << "\n" << out;
    EXPECT_NE(out.find("note: a positional model folder is the older form; write --model_name_or_path " + m.model),
              std::string::npos) << args << "\n" << out;
  }
}

// --lora_weight_path with a PEFT adapter whose target_modules are in another order and whose alpha is 32: the
// run starts from it at alpha 32 (it ran at 16 and saved 16 before), and the flags may list the targets in any
// order.
TEST(CliAdapterInterop, LoraWeightPathAdapterKeepsItsAlphaAndTargets) {
  TinyRun run;
  const io::HfConfig c = io::load_hf_config(run.model + "/config.json");
  model::LoraConfig lora;
  lora.r = 4, lora.alpha = 32, lora.target_modules = {"v_proj", "o_proj", "q_proj"};
  model::LoraLayout layout(c, lora);
  std::vector<float> params(size_t(layout.numel()));
  model::init_lora_params(layout, params.data(), 3);
  const std::string start = (run.dir / "start").string();
  model::save_peft_adapter(start, layout, params.data(), run.model);
  std::string out;
  const std::string a = (run.dir / "a").string();
  ASSERT_EQ(run_command(run.train_cmd(a, "--max_steps 1 --save_strategy no --lora_weight_path " + start), &out), 0)
      << out;
  EXPECT_NE(out.find("r 4, lora_alpha 32, target_modules v_proj o_proj q_proj taken from"), std::string::npos) << out;
  const auto config = read_json_file(fs::path(a) / "adapter_config.json");
  EXPECT_EQ(config["lora_alpha"], 32) << config.dump();
  EXPECT_EQ(config["r"], 4);
  EXPECT_EQ(config["target_modules"].get<std::set<std::string>>(), (std::set<std::string>{"q_proj", "v_proj", "o_proj"}));
  // the flags in another order (PEFT's order is arbitrary) are the same set
  const std::string b = (run.dir / "b").string();
  ASSERT_EQ(run_command(run.train_cmd(b, "--max_steps 1 --save_strategy no --lora_r 4 --lora_target_modules q_proj "
                                         "v_proj o_proj --lora_weight_path " + start), &out), 0)
      << out;
  // a flag that disagrees is a one-line error naming both values, before anything is loaded
  ASSERT_EQ(run_command(run.train_cmd((run.dir / "c").string(), "--max_steps 1 --lora_alpha 16 --lora_weight_path " +
                                                                   start), &out), 1)
      << out;
  EXPECT_EQ(lines_of(out).size(), 1u) << out;
  EXPECT_NE(out.find("error: --lora_alpha: is 16 but the adapter in --lora_weight_path has 32"), std::string::npos)
      << out;
}
