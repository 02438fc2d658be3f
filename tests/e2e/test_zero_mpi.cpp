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
#include "kernels/cpu_info.h"

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

// max over steps of |a - b| / |b|
double loss_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return d;
}

// How far the one-process run moves when only the fp32 summation order changes. The multi-rank runs below
// must match the one-process run "up to summation order": this measures what that means on this CPU
// instead of assuming one CPU's number. The same steps on the same global batch of 12 are run
//   - as gradient accumulation of w micro-batches of 12/w (w = 2, 3, 4): exactly the sub-batches a
//     world-size-w run gives its ranks, summed one after the other instead of by the all-reduce;
//   - with each other CPU kernel variant this machine can run (ONEDNN_MAX_CPU_ISA=AVX2, AVX512_CORE, ...:
//     other vector widths, GEMM kernels and blockings, i.e. the summation orders of other CPUs).
// All of these are equally right answers. A world-size-w run differs from the reference by regroupings of
// the same kind: its ranks compute the accumulation run's micro-batches, then the all-reduce adds the w
// partial gradients (w - 1 additions per element) in another order than the accumulation did. So
//   |world_w - ref| <= |world_w - accum_w| + |accum_w - ref| <= spread + spread = 2 x spread.
// Floor: where every order happens to give the same bits the spread is 0, and the bound falls back to
// kRoundingFloor: 6 AdamW steps, each moving a weight by at most lr (5e-3) times a relative change of its
// update of a few units of fp32 rounding (2^-24 ~ 6e-8) per summation regrouped, over weights of size
// ~0.1-0.3: about 6 x 5e-3 x 1e-6 / 0.1 ~ 3e-7 relative, rounded up to 1e-6 (losses: the loss itself is a
// sum of ~10^3 per-token terms, so 1e-6 relative is ~100 ulps of slack).
constexpr double kRoundingFloor = 1e-6;
struct Spread {
  double adapter = 0, loss = 0;
  std::string what;  // the runs it was measured over, for failure messages
};
Spread rounding_spread(const TinyRun& run, const std::string& name, const std::string& flags, const std::string& ref,
                       const std::vector<double>& ref_losses) {
  Spread s;
  std::string log;
  auto measure = [&](const std::string& label, const std::string& env, const std::string& extra) {
    const std::string out = (run.dir / (name + "_" + label)).string();
    ASSERT_EQ(run_command(env + run.train_cmd(out, flags + extra), &log), 0) << log;
    const double a = adapter_rel_diff(out, ref), l = loss_rel_diff(logged_losses(out), ref_losses);
    s.adapter = std::max(s.adapter, a), s.loss = std::max(s.loss, l);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s: adapter %.3g loss %.3g; ", label.c_str(), a, l);
    s.what += buf;
  };
  for (int w : {2, 3, 4})
    measure("accum" + std::to_string(w), "",
            "--per_device_train_batch_size " + std::to_string(12 / w) + " --gradient_accumulation_steps " + std::to_string(w));
  const auto variants = kernels::cpu_backend_info().variants_here;  // the last one is what runs by default
  for (size_t i = 0; i + 1 < variants.size(); ++i)
    measure(variants[i], "ONEDNN_MAX_CPU_ISA=" + variants[i] + " ", "--per_device_train_batch_size 12");
  std::printf("[ rounding spread ] %s\n", s.what.c_str());
  return s;
}
double bound(double spread) { return 2 * std::max(spread, kRoundingFloor); }

}  // namespace

TEST(ZeroMpi, EveryWorldSizeAndStageMatchesOneProcess) {
  TinyRun run(128);  // 6 steps x 12 samples stay inside one epoch: no sampler padding, which depends on the world size
  std::string log;
  const std::string ref = (run.dir / "ref").string();
  ASSERT_EQ(run_command(run.train_cmd(ref, std::string(kFlags) + "--per_device_train_batch_size 12"), &log), 0) << log;
  const auto ref_losses = logged_losses(ref);
  ASSERT_EQ(ref_losses.size(), 6u) << log;
  const Spread spread = rounding_spread(run, "order", std::string(kFlags), ref, ref_losses);

  struct Case { int world, stage; bool overlap = true; };
  std::vector<Case> cases;
  for (int world = 1; world <= 4; ++world)
    for (int stage = 0; stage <= 3; ++stage) cases.push_back({world, stage, !(world == 3 && stage == 2)});
  double worst = 0;
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
      EXPECT_NEAR(losses[i], ref_losses[i], bound(spread.loss) * std::abs(ref_losses[i]))
          << "world " << c.world << " stage " << c.stage << " step " << i + 1 << "; spread " << spread.what;
    const double diff = adapter_rel_diff(out, ref);
    worst = std::max(worst, diff);
    EXPECT_LE(diff, bound(spread.adapter)) << "world " << c.world << " stage " << c.stage << "; spread " << spread.what;
    // bytes sent per step: as the ZeRO formula predicts (every part gathered at each use: reuse distance 0)
    if (c.world > 1) {
      const auto comm = read_json_file(fs::path(out) / "zerolora_state.json")["communication"];
      EXPECT_DOUBLE_EQ(comm["bytes_sent_per_step"].get<double>(), comm["predicted_bytes_per_step"].get<double>())
          << "world " << c.world << " stage " << c.stage << ": " << comm.dump();
      EXPECT_GT(comm["bytes_sent_per_step"].get<double>(), 0);
    }
  }
  std::printf("[ world sizes 1-4 x stages 0-3 ] largest adapter difference %.3g (bound %.3g)\n", worst,
              bound(spread.adapter));
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
  // the moved runs are one-process-equivalent up to summation order, as above (their steps are split
  // between two world sizes, each a regrouping the spread measures)
  const Spread spread = rounding_spread(run, "order", flags, ref, a);
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
    EXPECT_LE(adapter_rel_diff(out, ref), bound(spread.adapter)) << name << "; spread " << spread.what;
    const auto b = logged_losses(out);
    ASSERT_EQ(b.size(), a.size()) << name;
    for (size_t i = 4; i < a.size(); ++i)
      EXPECT_NEAR(b[i], a[i], bound(spread.loss) * std::abs(a[i])) << name << " step " << i + 1 << "; spread " << spread.what;
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
  // Both runs have 2 ranks computing the same micro-batches with the same kernels on the same machine, and the
  // gathered NF4 blocks are bit-identical to the unsharded ones; a sum of two partial gradients is the same
  // in either order. What differs is the order of the squares summed for the clipping norm (per shard, then
  // across ranks): a relative change of a few fp32 roundings (~1e-7) in the clip factor, which AdamW's
  // m / sqrt(v) all but cancels (only eps does not scale). 1e-5 leaves two orders of magnitude above that,
  // and does not depend on the CPU, whose kernel choice is the same in both runs.
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
