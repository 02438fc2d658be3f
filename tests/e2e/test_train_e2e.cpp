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
  ASSERT_EQ(run_command(zerolora_binary() + " generate --model_name_or_path " + run.model + " --adapter " + out +
                            " --prompt 'What is 2 plus 3?' --max_new_tokens 5",
                        &log),
            0)
      << log;
  ASSERT_EQ(run_command("printf 'What is 2 plus 3?\\nWhat colour is the sky?\\n' | " + zerolora_binary() +
                            " chat --model_name_or_path " + run.model + " --adapter " + out +
                            " --conv_template chatml --max_new_tokens 6 --temperature 0",
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

namespace {

// The fields of HF's TrainerState dataclass (transformers 4.41-4.50): TrainerState.load_from_json is
// cls(**json), so any other top-level key is a TypeError in HF.
const std::vector<std::string> kHfTrainerStateKeys = {
    "best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step", "is_hyper_param_search",
    "is_local_process_zero", "is_world_process_zero", "log_history", "logging_steps", "max_steps",
    "num_input_tokens_seen", "num_train_epochs", "save_steps", "stateful_callbacks", "total_flos",
    "train_batch_size", "trial_name", "trial_params"};

std::vector<std::string> keys_of(const nlohmann::json& j) {
  std::vector<std::string> keys;
  for (const auto& item : j.items()) keys.push_back(item.key());
  return keys;
}

// transformers' get_linear_schedule_with_warmup lr_lambda, written out independently of src/train
double hf_linear_lambda(int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return double(step) / double(std::max<int64_t>(1, warmup));
  return std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - warmup)));
}

// The number after "eval_loss " in `zerolora eval`'s output.
double eval_loss_of(const std::string& log) {
  const size_t at = log.rfind("eval_loss ");
  EXPECT_NE(at, std::string::npos) << log;
  return at == std::string::npos ? NAN : std::stod(log.substr(at + 10));
}

}  // namespace

// What HF Trainer + PEFT users read from the output folder: trainer_state.json with HF's keys only (ours in
// zerolora_state.json), learning_rate logged after the scheduler step, total_flos as HF counts it, the final
// summary with HF's speed metrics, and PEFT's README.md model card.
TEST(TrainE2E, OutputsReadLikeHfTrainerAndPeft) {
  TinyRun run;
  const fs::path out = run.dir / "out";
  fs::create_directories(out);
  write_file(out / "README.md", "my own notes\n");  // a user's card in output_dir is left alone (checkpoints get ours)
  std::string log;
  const int64_t steps = 6, batch = 4, warmup = 2, max_len = 64;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), "--max_steps 6 --per_device_train_batch_size 4 --save_steps 3 "
                                                    "--lr_scheduler_type linear --warmup_steps 2 --padding max_length "
                                                    "--lora_r 4 --lora_target_modules q_proj v_proj"),
                        &log),
            0)
      << log;
  for (const fs::path dir : {out, out / "checkpoint-3", out / "checkpoint-6"}) {
    const auto state = read_json_file(dir / "trainer_state.json");
    EXPECT_EQ(keys_of(state), kHfTrainerStateKeys) << dir;
    const auto extras = read_json_file(dir / "zerolora_state.json");
    EXPECT_EQ(extras["world_size"], 1) << dir;
    EXPECT_TRUE(extras.contains("fingerprint")) << dir;
    EXPECT_TRUE(state["stateful_callbacks"]["TrainerControl"]["args"].contains("should_save")) << dir;
  }
  EXPECT_EQ(read_json_file(out / "checkpoint-3" / "trainer_state.json")["stateful_callbacks"]["TrainerControl"]["args"]
                ["should_save"], true);
  const auto state = read_json_file(out / "trainer_state.json");
  EXPECT_EQ(state["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"], true);

  // learning_rate at global step g is lr_lambda(g) x 5e-3: HF logs get_last_lr() after scheduler.step()
  std::vector<double> lrs;
  for (const auto& e : state["log_history"])
    if (e.contains("learning_rate")) lrs.push_back(e["learning_rate"].get<double>());
  ASSERT_EQ(lrs.size(), size_t(steps)) << state.dump();
  for (int64_t g = 1; g <= steps; ++g)
    EXPECT_DOUBLE_EQ(lrs[size_t(g - 1)], 5e-3 * hf_linear_lambda(g, warmup, steps)) << "step " << g;
  EXPECT_DOUBLE_EQ(lrs[0], 2.5e-3);  // warmup: step 1 applied 0, the log shows the next rate
  EXPECT_DOUBLE_EQ(lrs.back(), 0.0);

  // total_flos = 6 x non-embedding parameters (frozen + LoRA, as PeftModel counts them) x input_ids.numel()
  const auto c = read_json_file(fs::path(run.model) / "config.json");
  const int64_t V = c["vocab_size"], H = c["hidden_size"], I = c["intermediate_size"], L = c["num_hidden_layers"];
  const int64_t nh = c["num_attention_heads"], nkv = c.value("num_key_value_heads", nh);
  const int64_t hd = c.contains("head_dim") && !c["head_dim"].is_null() ? c["head_dim"].get<int64_t>() : H / nh;
  const bool tied = c.value("tie_word_embeddings", false);
  const int64_t per_layer = 2 * H + H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 3 * H * I;
  const int64_t lora = L * (4 * (H + nh * hd) + 4 * (H + nkv * hd));
  const double non_embedding = double(L * per_layer + H + (tied ? 0 : V * H) + lora);
  const double want_flos = 6.0 * non_embedding * double(steps * batch * max_len);
  EXPECT_NEAR(state["total_flos"].get<double>(), want_flos, 1e-9 * want_flos);
  EXPECT_NEAR(read_json_file(out / "checkpoint-3" / "trainer_state.json")["total_flos"].get<double>(), want_flos / 2,
              1e-9 * want_flos);

  // the final summary: HF's keys, rounded as speed_metrics rounds them
  const auto& last = state["log_history"].back();
  for (const char* key : {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                          "train_loss", "epoch", "step"})
    EXPECT_TRUE(last.contains(key)) << key << " missing from " << last.dump();
  const double runtime = last["train_runtime"].get<double>();
  EXPECT_GT(runtime, 0);
  EXPECT_NEAR(last["train_samples_per_second"].get<double>(), double(steps * batch) / runtime,
              1e-3 + 1e-3 * double(steps * batch) / runtime);
  EXPECT_NEAR(last["train_steps_per_second"].get<double>(), double(steps) / runtime, 1e-3 + 1e-3 * steps / runtime);
  EXPECT_EQ(last["total_flos"], state["total_flos"]);

  // PEFT's model card: in every checkpoint; a README.md of the user's in output_dir is kept
  const std::string card = read_file(out / "checkpoint-3" / "README.md");
  EXPECT_EQ(card.rfind("---\nbase_model: " + run.model + "\nlibrary_name: peft\n---\n", 0), 0u) << card;
  EXPECT_EQ(read_file(out / "README.md"), "my own notes\n");
  const std::string fresh = (run.dir / "fresh").string();
  ASSERT_EQ(run_command(run.train_cmd(fresh, "--max_steps 1 --save_strategy no"), &log), 0) << log;
  EXPECT_NE(read_file(fs::path(fresh) / "README.md").find("library_name: peft"), std::string::npos);
}

// HF's eval_loss: the mean over eval batches of each batch's token-mean loss, weighted by the batch size
// (evaluation_loop gathers loss.repeat(batch_size)); --eval_token_weighted_loss True: the mean over tokens.
// The expected values are put together from evaluations of single samples and of sample groups.
TEST(TrainE2E, EvalLossIsTheMeanOfBatchMeansAsHf) {
  TinyRun run(16);
  const auto rows = read_json_file(run.data);
  // eval(rows, flags): the printed eval_loss, or NaN when the command fails (a sample without trained tokens)
  auto eval = [&](const std::vector<size_t>& which, const std::string& extra) {
    nlohmann::json subset = nlohmann::json::array();
    for (size_t i : which) subset.push_back(rows[i]);
    std::string name = "eval";
    for (size_t i : which) name += "_" + std::to_string(i);
    const fs::path path = run.dir / (name + ".json");
    write_file(path, subset.dump());
    std::string log;
    if (run_command(zerolora_binary() + " eval --model_name_or_path " + run.model + " --eval_data_path " +
                        path.string() + " --conv_template chatml --model_max_length 64 --padding longest "
                        "--num_threads 1 " + extra,
                    &log) != 0)
      return double(NAN);
    return eval_loss_of(log);
  };
  // four samples with trained tokens within 64 tokens
  std::vector<size_t> pick;
  std::vector<double> single;
  for (size_t i = 0; i < rows.size() && pick.size() < 4; ++i) {
    const double l = eval({i}, "");
    if (std::isfinite(l)) pick.push_back(i), single.push_back(l);
  }
  ASSERT_EQ(pick.size(), 4u);
  const size_t a = pick[0], b = pick[1], c = pick[2], d = pick[3];
  const std::string tokens = "--eval_token_weighted_loss True --per_device_eval_batch_size 4";
  const double t01 = eval({a, b}, tokens), t23 = eval({c, d}, tokens), t012 = eval({a, b, c}, tokens);
  const double all_tokens = eval({a, b, c, d}, tokens);
  const double tol = 5e-6;  // `zerolora eval` prints 6 decimals
  EXPECT_NEAR(eval({a, b, c, d}, "--per_device_eval_batch_size 1"), (single[0] + single[1] + single[2] + single[3]) / 4,
              tol);
  EXPECT_NEAR(eval({a, b, c, d}, "--per_device_eval_batch_size 2"), (2 * t01 + 2 * t23) / 4, tol);
  EXPECT_NEAR(eval({a, b, c, d}, "--per_device_eval_batch_size 3"), (3 * t012 + single[3]) / 4, tol);
  // one batch: both means are the token mean
  EXPECT_NEAR(eval({a, b, c, d}, "--per_device_eval_batch_size 4"), all_tokens, tol);
  // the flag gives the token mean whatever the batches
  EXPECT_NEAR(eval({a, b, c, d}, "--per_device_eval_batch_size 1 --eval_token_weighted_loss True"), all_tokens, tol);
  // samples of different lengths: the two definitions differ
  EXPECT_GT(std::abs(eval({a, b, c, d}, "--per_device_eval_batch_size 1") - all_tokens), 1e-4);

  // in training: the eval log line carries HF's eval keys
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps 2 --per_device_train_batch_size 2 --save_strategy no "
                                           "--eval_data_path " + run.data + " --per_device_eval_batch_size 1"),
                        &log),
            0)
      << log;
  const auto state = read_json_file(fs::path(out) / "trainer_state.json");
  bool found = false;
  for (const auto& e : state["log_history"])
    if (e.contains("eval_loss")) {
      found = true;
      for (const char* key : {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"})
        EXPECT_TRUE(e.contains(key)) << key << " missing from " << e.dump();
    }
  EXPECT_TRUE(found) << state.dump();
}

// A checkpoint written before zerolora_state.json (extras as a "zerolora" key in trainer_state.json) resumes
// exactly.
TEST(TrainE2E, LegacyCheckpointWithZeroloraKeyResumes) {
  TinyRun run;
  const std::string flags = "--max_steps 6 --per_device_train_batch_size 4 --save_steps 3 --lora_r 4";
  const fs::path out = run.dir / "out";
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out.string(), flags), &log), 0) << log;
  const std::string want = read_file(out / "adapter_model.safetensors");
  fs::remove_all(out / "checkpoint-6");
  fs::remove(out / "adapter_model.safetensors");
  auto state = read_json_file(out / "checkpoint-3" / "trainer_state.json");
  state["zerolora"] = read_json_file(out / "checkpoint-3" / "zerolora_state.json");
  write_file(out / "checkpoint-3" / "trainer_state.json", state.dump(2) + "\n");
  fs::remove(out / "checkpoint-3" / "zerolora_state.json");
  ASSERT_EQ(run_command(run.train_cmd(out.string(), flags), &log), 0) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_EQ(read_file(out / "adapter_model.safetensors"), want);
  EXPECT_EQ(keys_of(read_json_file(out / "trainer_state.json")), kHfTrainerStateKeys);
}
