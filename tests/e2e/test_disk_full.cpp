// Disk full while saving: output_dir on a small tmpfs that fills up after the first checkpoint. The run
// stops with a clear error, the earlier checkpoint stays whole, nothing half-written is picked by resume,
// and once space is back the same command resumes from the last complete checkpoint.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "e2e_util.h"
#include "io/checkpoint_dir.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {
// A 2 MB tmpfs at `path`, unmounted again at the end of the test.
struct SmallDisk {
  fs::path path;
  bool mounted = false;
  explicit SmallDisk(fs::path p) : path(std::move(p)) {
    fs::create_directories(path);
    mounted = geteuid() == 0 && mount("tmpfs", path.c_str(), "tmpfs", 0, "size=2m") == 0;
  }
  ~SmallDisk() {
    if (mounted) umount2(path.c_str(), MNT_DETACH);
  }
};
}  // namespace

TEST(DiskFull, SaveFailsCleanlyAndTheLastCheckpointResumes) {
  TinyRun run;
  SmallDisk disk(run.dir / "small-disk");
  if (!disk.mounted) GTEST_SKIP() << "needs root and tmpfs mounts (CI runs as root) to make a small disk";
  const fs::path& mnt = disk.path;
  const std::string out = (mnt / "out").string();
  const std::string flags = "--max_steps 1000000 --per_device_train_batch_size 2 --save_steps 3 --lora_r 4";
  const std::string log_path = (run.dir / "train.log").string();
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", (run.train_cmd(out, flags) + " > " + log_path + " 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  for (int i = 0; i < 1200 && io::find_last_checkpoint(out).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_FALSE(io::find_last_checkpoint(out).empty());
  // fill the disk: the next save cannot complete
  std::string ignored;
  run_command("dd if=/dev/zero of=" + (mnt / "filler").string() + " bs=64k 2>/dev/null", &ignored);
  int status = 0;
  for (int i = 0; i < 3000 && waitpid(pid, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (waitpid(pid, &status, WNOHANG) == 0 && kill(pid, 0) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "training did not stop on a full disk";
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string log = read_file(log_path);
  const auto at = log.find("error:");
  ASSERT_NE(at, std::string::npos) << log;
  std::printf("%s\n", log.substr(at, log.find('\n', at) - at).c_str());
  // whatever checkpoint resume would pick is complete and loads
  const std::string last = io::find_last_checkpoint(out);
  ASSERT_FALSE(last.empty());
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors",
                        "trainer_state.json", "scheduler.json", "training_args.json"})
    EXPECT_TRUE(fs::exists(fs::path(last) / f)) << last << "/" << f;
  const int64_t step = *io::checkpoint_step_from_name(fs::path(last).filename().string());
  // space back: the same settings resume from it
  fs::remove(mnt / "filler");
  std::string rlog;
  ASSERT_EQ(run_command(run.train_cmd(out, "--max_steps " + std::to_string(step + 2) +
                                               " --per_device_train_batch_size 2 --save_steps 3 --lora_r 4"),
                        &rlog),
            0)
      << rlog;
  EXPECT_NE(rlog.find("resumed from " + last), std::string::npos) << rlog;
}

// --continue_on_save_error True: a save that fails on the full disk is reported and training goes on;
// once space is back the next checkpoints are written, and a stop signal ends the run cleanly.
TEST(DiskFull, ContinueOnSaveErrorKeepsTraining) {
  TinyRun run;
  SmallDisk disk(run.dir / "small-disk");
  if (!disk.mounted) GTEST_SKIP() << "needs root and tmpfs mounts (CI runs as root) to make a small disk";
  const fs::path& mnt = disk.path;
  const std::string out = (mnt / "out").string();
  const std::string log_path = (run.dir / "train.log").string();
  pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = run.train_cmd(out, "--max_steps 1000000 --per_device_train_batch_size 2 --save_steps 3 "
                                               "--save_total_limit 2 --lora_r 4 --continue_on_save_error True");
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " > " + log_path + " 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  auto wait_for = [&](auto done) {
    for (int i = 0; i < 3000; ++i) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  };
  auto log_has = [&](const std::string& s) { return read_file(log_path).find(s) != std::string::npos; };
  ASSERT_TRUE(wait_for([&] { return !io::find_last_checkpoint(out).empty(); }));
  std::string ignored;
  run_command("dd if=/dev/zero of=" + (mnt / "filler").string() + " bs=64k 2>/dev/null", &ignored);
  const bool warned = wait_for([&] { return log_has("was not saved"); });
  EXPECT_EQ(waitpid(pid, nullptr, WNOHANG), 0) << "training stopped on the failed save";
  fs::remove(mnt / "filler");
  const size_t saved_before = read_file(log_path).rfind("saved ");
  const bool saved_again = wait_for([&] { return read_file(log_path).rfind("saved ") != saved_before; });
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string log = read_file(log_path);
  ASSERT_TRUE(warned) << log;
  EXPECT_TRUE(saved_again) << log;
  ASSERT_TRUE(WIFEXITED(status)) << log;
  EXPECT_EQ(WEXITSTATUS(status), 0) << log;
  const auto at = log.find("warning: checkpoint-");
  std::printf("%s\n", log.substr(at, log.find('\n', at) - at).c_str());
  const std::string last = io::find_last_checkpoint(out);
  ASSERT_FALSE(last.empty());
  for (const char* f : {"adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(fs::path(last) / f)) << last << "/" << f;
}
