// End to end through the zerolora binary: training writes the adapter and checkpoints, resume continues
// exactly (also after kill -9 at random moments), bad flags stop with a message.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "e2e_util.h"
#include "io/checkpoint_dir.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

TEST(TrainE2E, WritesAdapterCheckpointsAndLossFalls) {
  TinyRun run;
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 12 --per_device_train_batch_size 4 --save_steps 5 "
                                           "--save_total_limit 2 --lora_target_modules q_proj k_proj v_proj o_proj "
                                           "gate_proj up_proj down_proj --lora_r 8"),
                        &log),
            0)
      << log;
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "trainer_state.json", "metrics.jsonl",
                        "loss_curve.svg"})
    EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;
  // save_steps 5 -> checkpoints 5 and 10; limit 2 keeps both; none half-written
  EXPECT_EQ(io::list_checkpoints(out).size(), 2u);
  EXPECT_TRUE(fs::exists(fs::path(out) / "checkpoint-10" / "optimizer.safetensors"));
  auto state = read_json_file(fs::path(out) / "trainer_state.json");
  EXPECT_EQ(state["global_step"], 12);
  std::vector<double> losses;
  for (const auto& e : state["log_history"])
    if (e.contains("loss")) losses.push_back(e["loss"].get<double>());
  ASSERT_GE(losses.size(), 12u);
  const double first = (losses[0] + losses[1] + losses[2]) / 3, last = (losses[9] + losses[10] + losses[11]) / 3;
  EXPECT_LT(last, first) << log;

  // the adapter is usable: generation and a two-turn chat in the training template
  ASSERT_EQ(run_command(zerolora_binary() + " generate " + run.model + " --adapter " + out +
                            " --prompt 'What is 2 plus 3?' --max_new_tokens 5",
                        &log),
            0)
      << log;
  ASSERT_EQ(run_command("printf 'What is 2 plus 3?\\nWhat colour is the sky?\\n' | " + zerolora_binary() + " chat " +
                            run.model + " --adapter " + out + " --conv_template chatml --max_new_tokens 6 --temperature 0",
                        &log),
            0)
      << log;
  size_t replies = 0;
  for (size_t p = log.find("ASSISTANT: "); p != std::string::npos; p = log.find("ASSISTANT: ", p + 1)) ++replies;
  EXPECT_EQ(replies, 2u) << log;
}

TEST(TrainE2E, RotationKeepsExactlySaveTotalLimit) {
  TinyRun run;
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 8 --per_device_train_batch_size 2 --save_steps 2 "
                                           "--save_total_limit 3"),
                        &log),
            0)
      << log;
  auto cks = io::list_checkpoints(out);
  ASSERT_EQ(cks.size(), 3u);
  EXPECT_TRUE(fs::exists(fs::path(out) / "checkpoint-8"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "checkpoint-2"));
}

TEST(TrainE2E, ResumeAfterKillMinus9IsExact) {
  TinyRun run;
  const std::string flags = "--max_steps 48 --per_device_train_batch_size 4 --save_steps 3 --lora_r 4";
  const std::string ref = (run.dir / "ref").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(ref, flags), &log), 0) << log;
  const std::string want = read_file(fs::path(ref) / "adapter_model.safetensors");

  const std::string out = (run.dir / "killed").string();
  std::mt19937 rng(1234);
  int kills = 0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    pid_t pid = fork();
    if (pid == 0) {
      const std::string cmd = run.train_cmd(out, flags) + " > /dev/null 2>&1";
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), (char*)nullptr);
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 400));
    if (kill(pid, SIGKILL) == 0) ++kills;
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) break;  // finished before the kill
  }
  EXPECT_GT(kills, 0);
  // whatever was left behind, the same command finishes the run
  ASSERT_EQ(run_command(run.train_cmd(out, flags), &log), 0) << log;
  EXPECT_EQ(read_file(fs::path(out) / "adapter_model.safetensors"), want)
      << "the resumed run's adapter differs from the uninterrupted run's";
  auto state = read_json_file(fs::path(out) / "trainer_state.json");
  EXPECT_EQ(state["global_step"], 48);
}

TEST(TrainE2E, SigtermSavesACheckpointAndExitsZero) {
  TinyRun run;
  const std::string out = (run.dir / "out").string();
  // far more steps than can run before the signal arrives, whatever the machine's speed
  const std::string flags = "--max_steps 1000000 --per_device_train_batch_size 2 --save_steps 10000000 --lora_r 4";
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + run.train_cmd(out, flags) + " > /dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  // wait until training runs (metrics appear), then ask it to stop
  for (int i = 0; i < 600 && !fs::exists(fs::path(out) / "metrics.jsonl"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string last = io::find_last_checkpoint(out);
  ASSERT_FALSE(last.empty()) << "SIGTERM must leave a checkpoint";
  const int64_t step = *io::checkpoint_step_from_name(fs::path(last).filename().string());
  EXPECT_GT(step, 0);
  EXPECT_LT(step, 1000000);
}

TEST(TrainE2E, ResumeWithDifferentGlobalBatchIsRefused) {
  TinyRun run;
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 4 --per_device_train_batch_size 2 --save_steps 2"), &log), 0)
      << log;
  EXPECT_EQ(run_command(run.train_cmd(out, "--max_steps 8 --per_device_train_batch_size 4 --save_steps 2"), &log), 1);
  EXPECT_NE(log.find("global_batch_size"), std::string::npos) << log;
  EXPECT_NE(log.find("cannot resume"), std::string::npos) << log;
  // a changed learning rate is explained, not refused
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 6 --per_device_train_batch_size 2 --save_steps 2 "
                                           "--learning_rate 1e-3"),
                        &log),
            0)
      << log;
  EXPECT_NE(log.find("learning_rate changed"), std::string::npos) << log;
}

TEST(TrainE2E, BadFlagsStopWithOneLine) {
  TinyRun run(8);
  std::string log;
  EXPECT_EQ(run_command(run.train_cmd((run.dir / "o").string(), "--learning_rat 1e-3"), &log), 1);
  EXPECT_NE(log.find("--learning_rat"), std::string::npos) << log;
  EXPECT_NE(log.find("did you mean --learning_rate"), std::string::npos) << log;
  EXPECT_EQ(run_command(run.train_cmd((run.dir / "o").string(), "--q_lora True --fp16 True"), &log), 1);
  EXPECT_NE(log.find("--fp16"), std::string::npos) << log;
  EXPECT_NE(log.find("--q_lora"), std::string::npos) << log;
  EXPECT_EQ(run_command(run.train_cmd((run.dir / "o").string(), "--bf16 True --fp16 True"), &log), 1);
  EXPECT_NE(log.find("only one half precision"), std::string::npos) << log;
  EXPECT_EQ(run_command(run.train_cmd((run.dir / "o").string(), "--lora_target_modules q_proj,v_proj"), &log), 1);
  EXPECT_NE(log.find("lora_target_modules"), std::string::npos) << log;
}
