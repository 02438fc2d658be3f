// The reliability findings of issue 18, through the zerolora binary: data that trains nothing, an unusable
// output_dir, resuming another run's checkpoint, progress without a terminal, resume side effects
// (metrics.jsonl, train_loss), the final adapter written all or nothing.
#include <gtest/gtest.h>

#include <unistd.h>

#include <set>

#include "e2e_util.h"
#include "io/checkpoint_dir.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> metrics_rows(const fs::path& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// TinyRun::train_cmd without its --logging_steps 1 and --padding longest, with a choice of model_max_length
std::string quiet_train_cmd(const TinyRun& run, const std::string& out, const std::string& extra,
                            int64_t model_max_length = 64) {
  return zerolora_binary() + " train --model_name_or_path " + run.model + " --data_path " + run.data +
         " --output_dir " + out + " --conv_template chatml --model_max_length " + std::to_string(model_max_length) +
         " --lora_dropout 0 --learning_rate 5e-3 --num_threads 1 " + extra;
}

// The "train_loss" of the final summary in trainer_state.json.
double final_train_loss(const fs::path& out) {
  const auto state = read_json_file(out / "trainer_state.json");
  for (const auto& e : state["log_history"])
    if (e.contains("train_loss")) return e["train_loss"].get<double>();
  ADD_FAILURE() << "no train_loss in " << state.dump();
  return NAN;
}

}  // namespace

// Every sample masked (cut by --model_max_length before the first answer, no answer, an empty conversation,
// one starting with gpt): an error with the reasons counted, and no adapter; an empty list likewise.
TEST(ReliabilityE2E, DataWithNoTrainedTokenIsAnErrorWithReasonsCounted) {
  TinyRun run(4);
  const std::string long_question(400, 'q');
  const nlohmann::json rows = nlohmann::json::parse(R"([
    {"id": "cut", "conversations": [{"from": "human", "value": ")" + long_question + R"("}, {"from": "gpt", "value": "ok"}]},
    {"id": "cut2", "conversations": [{"from": "human", "value": ")" + long_question + R"( again"}, {"from": "gpt", "value": "ok"}]},
    {"id": "no_answer", "conversations": [{"from": "human", "value": "hi"}]},
    {"id": "empty", "conversations": []},
    {"id": "gpt_first", "conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}]}
  ])");
  const fs::path data = run.dir / "masked.json";
  write_file(data, rows.dump());
  const fs::path out = run.dir / "out";
  std::string log;
  EXPECT_EQ(run_command(zerolora_binary() + " train --model_name_or_path " + run.model + " --data_path " +
                            data.string() + " --output_dir " + out.string() +
                            " --conv_template chatml --model_max_length 64 --max_steps 2 --num_threads 1",
                        &log),
            1)
      << log;
  EXPECT_NE(log.find("error: " + data.string() + ": no token of its 5 samples is trained"), std::string::npos) << log;
  EXPECT_NE(log.find("2 truncated before the first answer"), std::string::npos) << log;
  EXPECT_NE(log.find("2 ends with a user message"), std::string::npos) << log;  // no answer; gpt first (dropped)
  EXPECT_NE(log.find("1 no user/assistant pair"), std::string::npos) << log;
  EXPECT_NE(log.find("raise --model_max_length (64)"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out / "adapter_model.safetensors"));
  EXPECT_TRUE(io::list_checkpoints(out.string()).empty());

  // --lazy_preprocess finds it after the first epoch (every sample tokenised once)
  EXPECT_EQ(run_command(zerolora_binary() + " train --model_name_or_path " + run.model + " --data_path " +
                            data.string() + " --output_dir " + (run.dir / "lazy").string() +
                            " --conv_template chatml --model_max_length 64 --num_train_epochs 3 --save_strategy no "
                            "--lazy_preprocess True --num_threads 1",
                        &log),
            1)
      << log;
  EXPECT_NE(log.find("no token of its 5 samples is trained"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(run.dir / "lazy" / "adapter_model.safetensors"));

  write_file(run.dir / "none.json", "[]");
  EXPECT_EQ(run_command(zerolora_binary() + " train --model_name_or_path " + run.model + " --data_path " +
                            (run.dir / "none.json").string() + " --output_dir " + (run.dir / "o2").string() +
                            " --conv_template chatml --max_steps 2 --num_threads 1",
                        &log),
            1)
      << log;
  EXPECT_NE(log.find("holds no samples"), std::string::npos) << log;
}

// An output_dir that is a file, lies under a file, or cannot be written: one line about --output_dir, before
// anything is loaded (the data path here does not even exist).
TEST(ReliabilityE2E, UnusableOutputDirIsReportedFirstInOneLine) {
  TinyRun run(4);
  const fs::path file = run.dir / "a_file";
  write_file(file, "x");
  const std::string base = zerolora_binary() + " train --model_name_or_path " + run.model +
                           " --data_path /nonexistent/data.json --num_threads 1 --output_dir ";
  struct Case {
    std::string dir, says;
  };
  std::vector<Case> cases = {{file.string(), "is a file, not a folder"},
                             {(file / "sub" / "out").string(), "is under " + file.string() + ", which is a file"},
                             {"/proc/zerolora-out", "cannot be created"}};
  for (const auto& c : cases) {
    std::string log;
    EXPECT_EQ(run_command(base + c.dir, &log), 1) << c.dir << "\n" << log;
    EXPECT_NE(log.find("error: --output_dir " + c.dir + ": " + c.says), std::string::npos) << log;
    EXPECT_EQ(log.find("data.json"), std::string::npos) << "the data was looked at first:\n" << log;
    EXPECT_EQ(log.find("internal error"), std::string::npos) << log;
  }
  // a read-only folder (root writes anywhere, so as root the run drops to nobody)
  const fs::path ro = run.dir / "ro";
  fs::create_directories(ro);
  fs::permissions(run.dir.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                      fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read | fs::perms::group_exec |
                          fs::perms::others_read | fs::perms::others_exec);
  std::string prefix;
  if (geteuid() == 0) {
    if (run_command("command -v setpriv > /dev/null") != 0) GTEST_SKIP() << "read-only case: needs setpriv as root";
    prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  }
  std::string log;
  EXPECT_EQ(run_command(prefix + base + ro.string(), &log), 1) << log;
  EXPECT_NE(log.find("error: --output_dir " + ro.string() + ": is not writable: Permission denied"), std::string::npos)
      << log;
}

// output_dir holds an earlier run's checkpoints (other lora_r, other targets): the automatic resume says so
// and names the two ways out; --resume_from_checkpoint True without a checkpoint raises as HF does; a
// checkpoint path that does not exist is reported as such.
TEST(ReliabilityE2E, ResumingAnotherRunsCheckpointSaysSoAndNamesTheWayOut) {
  TinyRun run(16);
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 2 --per_device_train_batch_size 2 --save_steps 2 --lora_r 4"),
                        &log),
            0)
      << log;
  for (const std::string other : {"--lora_r 8", "--lora_r 4 --lora_target_modules q_proj k_proj v_proj"}) {
    EXPECT_EQ(run_command(run.train_cmd(out, "--max_steps 4 --per_device_train_batch_size 2 --save_steps 2 " + other),
                          &log),
              1)
        << other << "\n" << log;
    EXPECT_NE(log.find("cannot resume an earlier run's checkpoint found in --output_dir"), std::string::npos) << log;
    EXPECT_NE(log.find(other == "--lora_r 8" ? "lora_r 4 -> 8" : "lora_target_modules"), std::string::npos) << log;
    EXPECT_NE(log.find("--overwrite_output_dir True"), std::string::npos) << log;
    EXPECT_NE(log.find("--resume_from_checkpoint False"), std::string::npos) << log;
    EXPECT_EQ(log.find("config.json that came with"), std::string::npos) << log;
  }
  // the ways out work
  EXPECT_EQ(run_command(run.train_cmd(out, "--max_steps 2 --per_device_train_batch_size 2 --save_strategy no "
                                           "--lora_r 8 --resume_from_checkpoint False"),
                        &log),
            0)
      << log;
  EXPECT_EQ(run_command(run.train_cmd(out, "--max_steps 2 --per_device_train_batch_size 2 --save_strategy no "
                                           "--lora_r 8 --overwrite_output_dir True"),
                        &log),
            0)
      << log;
  EXPECT_NE(log.find("belongs to another run"), std::string::npos) << log;

  // True with nothing to resume: HF's ValueError, not a silent fresh start
  const std::string fresh = (run.dir / "fresh").string();
  EXPECT_EQ(run_command(run.train_cmd(fresh, "--max_steps 2 --resume_from_checkpoint True"), &log), 1) << log;
  EXPECT_NE(log.find("No valid checkpoint found in output directory (" + fresh + ")"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(fs::path(fresh) / "adapter_model.safetensors"));

  const std::string missing = (run.dir / "nowhere" / "checkpoint-5").string();
  EXPECT_EQ(run_command(run.train_cmd(fresh, "--max_steps 2 --resume_from_checkpoint " + missing), &log), 1) << log;
  EXPECT_NE(log.find("error: --resume_from_checkpoint " + missing + ": does not exist"), std::string::npos) << log;
  EXPECT_EQ(log.find(".bin"), std::string::npos) << log;
}

// Without a terminal: a plain progress line at the interval (ZEROLORA_PROGRESS_SECONDS, 0 = every step here)
// even when nothing is logged (--logging_steps past the run), and never the bar's control codes.
TEST(ReliabilityE2E, WithoutATerminalPlainProgressLinesAndNoControlCodes) {
  TinyRun run(16);
  std::string log;
  ASSERT_EQ(run_command("ZEROLORA_PROGRESS_SECONDS=0 " +
                            quiet_train_cmd(run, (run.dir / "out").string(),
                                            "--max_steps 4 --per_device_train_batch_size 2 --save_strategy no "
                                            "--logging_steps 500 --padding longest"),
                        &log),
            0)
      << log;
  for (int step = 1; step <= 4; ++step)
    EXPECT_NE(log.find("progress: step " + std::to_string(step) + "/4 ("), std::string::npos) << log;
  EXPECT_NE(log.find("tok/s  ETA "), std::string::npos) << log;
  EXPECT_EQ(log.find('\r'), std::string::npos) << log;
  EXPECT_EQ(log.find("\033["), std::string::npos) << log;
  // the default interval (30 s) prints the last step's line at least
  ASSERT_EQ(run_command(quiet_train_cmd(run, (run.dir / "out2").string(),
                                        "--max_steps 3 --per_device_train_batch_size 2 --save_strategy no "
                                        "--logging_steps 500 --padding longest"),
                        &log),
            0)
      << log;
  EXPECT_NE(log.find("progress: step 3/3 (100%)"), std::string::npos) << log;
}

// Under mpirun a rank's stdout is mpirun's pseudo-terminal even when mpirun's output goes to a file: plain lines
// there too. (A suite of its own, *Mpi, so scripts/sanitize.sh runs it in its pass without LeakSanitizer, whose
// reports of OpenMPI's own allocations would fail it.)
TEST(ReliabilityMpi, UnderMpirunToAFilePlainProgressLinesAndNoControlCodes) {
  TinyRun run(16);
  if (run_command("command -v mpirun > /dev/null") != 0) GTEST_SKIP() << "mpirun part: needs OpenMPI's mpirun";
  const fs::path mpi_log = run.dir / "mpirun.log";
  ASSERT_EQ(run_command("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe --mca "
                        "btl_vader_single_copy_mechanism none -np 2 " +
                        quiet_train_cmd(run, (run.dir / "out3").string(),
                                        "--max_steps 3 --per_device_train_batch_size 2 --save_strategy no "
                                        "--logging_steps 500 --padding longest") +
                        " > " + mpi_log.string() + " 2>&1"),
            0)
      << read_file(mpi_log);
  const std::string mpi = read_file(mpi_log);
  EXPECT_NE(mpi.find("progress: step 3/3 (100%)"), std::string::npos) << mpi;
  EXPECT_EQ(mpi.find("\033["), std::string::npos) << mpi;
  EXPECT_EQ(mpi.find('\r'), std::string::npos) << mpi;
}

// A run resumed from checkpoint-3 after steps 4-6 were logged: metrics.jsonl has each step once, with the
// uninterrupted run's numbers, and train_loss covers all six steps as in the uninterrupted run.
TEST(ReliabilityE2E, ResumeKeepsMetricsRowsUniqueAndTrainLossOverTheWholeRun) {
  TinyRun run;
  const std::string flags = "--max_steps 6 --per_device_train_batch_size 4 --save_steps 3 --lora_r 4";
  const fs::path ref = run.dir / "ref", out = run.dir / "out";
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(ref.string(), flags), &log), 0) << log;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), flags), &log), 0) << log;
  // as if killed after logging step 6 but before its checkpoint was complete
  fs::remove_all(out / "checkpoint-6");
  fs::remove(out / "adapter_model.safetensors");
  ASSERT_EQ(run_command(run.train_cmd(out.string(), flags), &log), 0) << log;
  ASSERT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_EQ(read_file(out / "adapter_model.safetensors"), read_file(ref / "adapter_model.safetensors"));

  const auto want = metrics_rows(ref / "metrics.jsonl"), got = metrics_rows(out / "metrics.jsonl");
  std::vector<int64_t> steps;
  for (const auto& r : got)
    if (r.contains("loss")) steps.push_back(r["step"].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6})) << read_file(out / "metrics.jsonl");
  ASSERT_EQ(got.size(), want.size()) << read_file(out / "metrics.jsonl");
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i].contains("loss")) {
      EXPECT_EQ(got[i]["loss"], want[i]["loss"]) << i;
    }
  EXPECT_EQ(got.back().count("train_loss"), 1u);

  // the same doubles added in the same order: equal, not merely close
  EXPECT_EQ(final_train_loss(out), final_train_loss(ref));
  // and it is the mean of the six step losses (logging_steps 1: each logged loss is one step's)
  double sum = 0;
  for (const auto& r : want)
    if (r.contains("loss")) sum += r["loss"].get<double>();
  EXPECT_NEAR(final_train_loss(ref), sum / 6, 1e-12);
}

// The final adapter appears whole or not at all: when adapter_config.json cannot be put in place, no
// adapter_model.safetensors is left without it (also with --continue_on_save_error).
TEST(ReliabilityE2E, FinalAdapterIsWrittenAllOrNothing) {
  TinyRun run(16);
  const fs::path out = run.dir / "out";
  fs::create_directories(out / "adapter_config.json");  // a folder where the config must go
  std::string log;
  EXPECT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 2 --per_device_train_batch_size 2 --save_steps 1 "
                                                    "--continue_on_save_error True"),
                        &log),
            1)
      << log;
  EXPECT_NE(log.find("the final adapter could not be put in place"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out / "adapter_model.safetensors")) << log;
  EXPECT_EQ(log.find("internal error"), std::string::npos) << log;
  // the checkpoints are complete, and once the obstacle is gone the same command writes the adapter
  fs::remove_all(out / "adapter_config.json");
  ASSERT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 2 --per_device_train_batch_size 2 --save_steps 1 "
                                                    "--continue_on_save_error True"),
                        &log),
            0)
      << log;
  EXPECT_TRUE(fs::exists(out / "adapter_model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out / "adapter_config.json"));
}

// loss_curve.svg is a picture, not part of a checkpoint: when it cannot be written (here a folder stands in its
// place; a full disk does the same) each save says so in one warning line, the checkpoints and the adapter are
// written and the run ends as usual, without --continue_on_save_error. Before, the failed picture ended the run
// (or, with --continue_on_save_error, said that a checkpoint that was written "was not saved").
TEST(ReliabilityE2E, LossCurveThatCannotBeWrittenIsAWarningOnly) {
  TinyRun run(16);
  const fs::path out = run.dir / "out";
  fs::create_directories(out / "loss_curve.svg" / "x");
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 2 --per_device_train_batch_size 2 --save_steps 1 "
                                                    "--save_total_limit 1 --lora_r 4"),
                        &log),
            0)
      << log;
  EXPECT_NE(log.find("warning: " + (out / "loss_curve.svg").string() + " was not updated ("), std::string::npos)
      << log;
  EXPECT_EQ(log.find("was not saved"), std::string::npos) << log;
  EXPECT_NE(log.find("saved " + (out / "checkpoint-2").string()), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out / "checkpoint-1")) << "rotation still runs: " << log;
  EXPECT_TRUE(fs::exists(out / "checkpoint-2" / "adapter_model.safetensors")) << log;
  EXPECT_TRUE(fs::exists(out / "adapter_model.safetensors")) << log;
  EXPECT_TRUE(fs::is_directory(out / "loss_curve.svg")) << log;
}

// --model_max_length far beyond max_position_embeddings (512 in the tiny preset): a warning as HF gives, and
// rows are not padded to it (--padding max_length would make every row 100000 long); the result is the run
// with a model_max_length that fits (the samples are shorter than either).
TEST(ReliabilityE2E, ModelMaxLengthBeyondThePositionsWarnsAndDoesNotPadToIt) {
  TinyRun run(16);
  const std::string flags = "--max_steps 2 --per_device_train_batch_size 2 --save_strategy no --lora_r 4 ";
  const fs::path fits = run.dir / "fits", beyond = run.dir / "beyond";
  std::string log;
  ASSERT_EQ(run_command(quiet_train_cmd(run, fits.string(), flags + "--padding longest", 512), &log), 0) << log;
  ASSERT_EQ(run_command(quiet_train_cmd(run, beyond.string(), flags + "--padding max_length", 100000), &log),
            0)
      << log;
  EXPECT_NE(log.find("warning: --model_max_length 100000 is longer than the model's max_position_embeddings 512"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("rows are padded to the longest of each batch"), std::string::npos) << log;
  EXPECT_EQ(read_file(beyond / "adapter_model.safetensors"), read_file(fits / "adapter_model.safetensors"));
}
