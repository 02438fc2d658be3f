// Data parallelism under mpirun: for world sizes 1-4 and ZeRO stages 0-3 the per-step losses and the
// final adapter equal the single-process run with the same global batch (token-weighted loss over the
// whole global batch, dropout off, f32); runs resume across world sizes and stages; QLoRA works with ZeRO-3.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "e2e_util.h"
#include "io/checkpoint_dir.h"
#include "io/safetensors.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

std::string mpirun(int np) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
         "mpirun --oversubscribe --mca btl_vader_single_copy_mechanism none -np " + std::to_string(np) + " ";
}

// Small buckets and thresholds so the tiny model exercises the real machinery: several gradient
// buckets per step, every frozen tensor sharded in stage 3, and prefetching of part of the next block.
std::string write_ds_config(const TempDir& dir, int stage, bool overlap = true) {
  const std::string path = (dir / ("ds_s" + std::to_string(stage) + (overlap ? "" : "_sync") + ".json")).string();
  write_file(path, "{\"zero_optimization\": {\"stage\": " + std::to_string(stage) +
                       ", \"overlap_comm\": " + (overlap ? "true" : "false") + ", \"contiguous_gradients\": true,"
                       " \"reduce_bucket_size\": 1000, \"stage3_param_persistence_threshold\": 0,"
                       " \"stage3_prefetch_bucket_size\": 20000, \"stage3_max_reuse_distance\": 0},"
                       " \"train_micro_batch_size_per_gpu\": \"auto\", \"gradient_accumulation_steps\": \"auto\","
                       " \"train_batch_size\": \"auto\", \"gradient_clipping\": \"auto\"}");
  return path;
}

std::vector<double> logged_losses(const std::string& out) {
  std::vector<double> l;
  const auto state = read_json_file(fs::path(out) / "trainer_state.json");  // kept alive for the loop
  for (const auto& e : state["log_history"])
    if (e.contains("loss")) l.push_back(e["loss"].get<double>());
  return l;
}

// max |a - b| / max |b| over every adapter tensor
double adapter_rel_diff(const std::string& a_dir, const std::string& b_dir) {
  auto a = io::TensorStore::open_file(a_dir + "/adapter_model.safetensors");
  auto b = io::TensorStore::open_file(b_dir + "/adapter_model.safetensors");
  EXPECT_EQ(a.names(), b.names());
  double diff = 0, scale = 0;
  for (const auto& name : b.names()) {
    core::Tensor x = a.load(name, core::DType::F32), y = b.load(name, core::DType::F32);
    for (int64_t i = 0; i < y.numel(); ++i) {
      diff = std::max(diff, double(std::abs(x.data<float>()[i] - y.data<float>()[i])));
      scale = std::max(scale, double(std::abs(y.data<float>()[i])));
    }
  }
  return diff / scale;
}

const char* kFlags = "--max_steps 6 --save_steps 3 --token_weighted_loss True --lora_r 4 "
                     "--lora_target_modules q_proj v_proj down_proj --max_grad_norm 0.5 ";

}  // namespace

TEST(ZeroMpi, EveryWorldSizeAndStageMatchesOneProcess) {
  TinyRun run(128);  // 6 steps x 12 samples stay inside one epoch: no sampler padding, which depends on the world size
  std::string log;
  const std::string ref = (run.dir / "ref").string();
  ASSERT_EQ(run_command(run.train_cmd(ref, std::string(kFlags) + "--per_device_train_batch_size 12"), &log), 0) << log;
  const auto ref_losses = logged_losses(ref);
  ASSERT_EQ(ref_losses.size(), 6u) << log;

  struct Case { int world, stage; bool overlap = true; };
  std::vector<Case> cases;
  for (int world = 1; world <= 4; ++world)
    for (int stage = 0; stage <= 3; ++stage) cases.push_back({world, stage, !(world == 3 && stage == 2)});
  for (Case c : cases) {
    const std::string out = (run.dir / ("w" + std::to_string(c.world) + "s" + std::to_string(c.stage))).string();
    // (world 3, stage 2 reduces its buckets without overlap_comm: the blocking path)
    const std::string cmd = mpirun(c.world) + run.train_cmd(out, std::string(kFlags) + "--per_device_train_batch_size " +
                                                                     std::to_string(12 / c.world) + " --deepspeed " +
                                                                     write_ds_config(run.dir, c.stage, c.overlap));
    ASSERT_EQ(run_command(cmd, &log), 0) << cmd << "\n" << log;
    const auto losses = logged_losses(out);
    ASSERT_EQ(losses.size(), ref_losses.size()) << log;
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], ref_losses[i], 1e-5 * std::abs(ref_losses[i])) << "world " << c.world << " stage " << c.stage << " step " << i + 1;
    EXPECT_LT(adapter_rel_diff(out, ref), 1e-5) << "world " << c.world << " stage " << c.stage;
    // bytes sent per step: as the ZeRO formula predicts (every part gathered at each use: reuse distance 0)
    if (c.world > 1) {
      const auto comm = read_json_file(fs::path(out) / "trainer_state.json")["zerolora"]["communication"];
      EXPECT_DOUBLE_EQ(comm["bytes_sent_per_step"].get<double>(), comm["predicted_bytes_per_step"].get<double>())
          << "world " << c.world << " stage " << c.stage << ": " << comm.dump();
      EXPECT_GT(comm["bytes_sent_per_step"].get<double>(), 0);
    }
  }
}

// Saved with one world size and stage, resumed with another: continues exactly like an uninterrupted
// one-process run (checkpoints hold full, world-size-independent buffers).
TEST(ZeroMpi, ResumesAcrossWorldSizesAndStages) {
  TinyRun run(128);  // 8 steps x 12 samples stay inside one epoch
  std::string log;
  const std::string flags = std::string(kFlags) + "--max_steps 8 --save_steps 4 ";
  const std::string ref = (run.dir / "ref").string();
  ASSERT_EQ(run_command(run.train_cmd(ref, flags + "--per_device_train_batch_size 12"), &log), 0) << log;
  const auto a = logged_losses(ref);
  struct Move { int from_world, from_stage, to_world, to_stage; };
  for (Move m : {Move{4, 3, 2, 2}, Move{2, 3, 3, 3}, Move{3, 2, 2, 1}}) {
    const std::string name = "moved" + std::to_string(m.from_world) + std::to_string(m.to_world);
    const std::string out = (run.dir / name).string();
    auto cmd = [&](int world, int stage) {
      return mpirun(world) + run.train_cmd(out, flags + "--per_device_train_batch_size " + std::to_string(12 / world) +
                                                    " --deepspeed " + write_ds_config(run.dir, stage));
    };
    ASSERT_EQ(run_command(cmd(m.from_world, m.from_stage), &log), 0) << log;
    // keep only checkpoint-4, as if the first job had died after it
    fs::remove_all(fs::path(out) / "checkpoint-8");
    fs::remove(fs::path(out) / "adapter_model.safetensors");
    ASSERT_EQ(run_command(cmd(m.to_world, m.to_stage), &log), 0) << log;
    EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
    EXPECT_LT(adapter_rel_diff(out, ref), 1e-5) << name;
    const auto b = logged_losses(out);
    ASSERT_EQ(b.size(), a.size()) << name;
    for (size_t i = 4; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-5 * std::abs(a[i])) << name << " step " << i + 1;
  }
}

// QLoRA with ZeRO-3 (DeepSpeed refuses the combination): the NF4 codes and scales are sharded and
// gathered like any frozen weight, so training equals QLoRA without sharding at the same world size.
TEST(ZeroMpi, QLoraWithStage3MatchesQLoraWithoutSharding) {
  TinyRun run(128);
  std::string log;
  const std::string flags = std::string(kFlags) + "--q_lora True --per_device_train_batch_size 6 --deepspeed ";
  const std::string s0 = (run.dir / "qlora_s0").string(), s3 = (run.dir / "qlora_s3").string();
  ASSERT_EQ(run_command(mpirun(2) + run.train_cmd(s0, flags + write_ds_config(run.dir, 0)), &log), 0) << log;
  ASSERT_EQ(run_command(mpirun(2) + run.train_cmd(s3, flags + write_ds_config(run.dir, 3)), &log), 0) << log;
  EXPECT_NE(log.find("ZeRO-3: frozen model"), std::string::npos) << log;
  const auto a = logged_losses(s0), b = logged_losses(s3);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-5 * std::abs(a[i])) << "step " << i + 1;
  EXPECT_LT(adapter_rel_diff(s3, s0), 1e-5);
}

TEST(ZeroMpi, KillingOneRankStopsAllRanksAndKeepsCheckpoints) {
  TinyRun run(128);
  const std::string out = (run.dir / "killed-rank").string();
  const std::string cmd = mpirun(2) + run.train_cmd(out, "--max_steps 100000 --per_device_train_batch_size 2 "
                                                          "--save_steps 2 --save_total_limit 2 --lora_r 4") +
                          " > " + (run.dir / "mpirun.log").string() + " 2>&1";
  pid_t launcher = fork();
  if (launcher == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  // wait until a checkpoint exists, then kill -9 one rank (a zerolora process writing to this output_dir)
  for (int i = 0; i < 1200 && io::find_last_checkpoint(out).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_FALSE(io::find_last_checkpoint(out).empty());
  std::string pids;
  // a rank process (its name is zerolora), not the shell or mpirun whose command lines match too
  const std::string find_ranks = "for p in $(pgrep -f 'zerolora train .*" + out +
                                 "'); do [ \"$(cat /proc/$p/comm 2>/dev/null)\" = zerolora ] && echo $p; done";
  ASSERT_EQ(run_command(find_ranks + " | head -1", &pids), 0);
  ASSERT_FALSE(pids.empty());
  const pid_t victim = pid_t(std::stol(pids));
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  int status = 0;
  waitpid(launcher, &status, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 30.0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0);
  const std::string log = read_file(run.dir / "mpirun.log");
  EXPECT_NE(log.find("rank"), std::string::npos) << log;
  // no rank is left running, and the last checkpoint is whole: the same command on one rank resumes from it
  std::string left;
  run_command(find_ranks, &left);
  EXPECT_TRUE(left.empty()) << left;
  const std::string last = io::find_last_checkpoint(out);
  std::string rlog;
  ASSERT_EQ(run_command(mpirun(2) + run.train_cmd(out, "--max_steps " + std::to_string(*io::checkpoint_step_from_name(
                                                                             fs::path(last).filename().string()) + 1) +
                                                          " --per_device_train_batch_size 2 --save_steps 2 "
                                                          "--save_total_limit 2 --lora_r 4"),
                        &rlog),
            0)
      << rlog;
  EXPECT_NE(rlog.find("resumed from " + last), std::string::npos) << rlog;
}
