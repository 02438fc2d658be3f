#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "test_util.h"

using namespace zerolora;
using zerolora::test::read_file;
using zerolora::test::TempDir;
using zerolora::test::write_file;
namespace fs = std::filesystem;

using zerolora::test::error_of;

namespace {

// Makes output_dir/name as a folder holding one file that records which version it is.
void make_checkpoint(const fs::path& output_dir, const std::string& name, const std::string& marker = "x") {
  fs::create_directories(output_dir / name);
  write_file(output_dir / name / "trainer_state.json", marker);
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}


}  // namespace

TEST(CheckpointDir, WriteFileSyncedWritesAndTruncates) {
  TempDir dir;
  std::string path = (dir / "blob.bin").string();
  std::string bytes("a\0b\xff", 4);
  io::write_file_synced(path, bytes);
  EXPECT_EQ(read_file(path), bytes);
  io::write_file_synced(path, "z");  // shorter content replaces, not overlays
  EXPECT_EQ(read_file(path), "z");
  EXPECT_NE(error_of([&] { io::write_file_synced((dir / "no/such/dir/f").string(), "x"); }).find("cannot create"),
            std::string::npos);
}

TEST(CheckpointDir, CommitMovesCompleteFolderIntoPlace) {
  TempDir out;
  auto final_path = (out / "checkpoint-200").string();
  {
    auto dir = io::AtomicDir::begin(final_path);
    EXPECT_EQ(fs::path(dir.temp_path()).filename().string(), ".tmp-checkpoint-200-" + std::to_string(getpid()));
    EXPECT_FALSE(fs::exists(final_path));
    io::write_file_synced(dir.file("trainer_state.json"), "{}");
    fs::create_directories(dir.file("global_step200"));
    io::write_file_synced(dir.file("global_step200/shard_0.safetensors"), "weights");
    dir.commit();
    EXPECT_TRUE(dir.committed());
    EXPECT_THROW(dir.commit(), core::Error);
  }
  EXPECT_EQ(names_in(out.path()), std::vector<std::string>{"checkpoint-200"});
  EXPECT_EQ(read_file(out / "checkpoint-200/trainer_state.json"), "{}");
  EXPECT_EQ(read_file(out / "checkpoint-200/global_step200/shard_0.safetensors"), "weights");
}

TEST(CheckpointDir, AbandonedDirLeavesNoTrace) {
  TempDir out;
  {
    auto dir = io::AtomicDir::begin((out / "checkpoint-7").string());
    io::write_file_synced(dir.file("half_written"), "...");
    EXPECT_TRUE(fs::is_directory(dir.temp_path()));
  }  // destroyed without commit, as when an exception unwinds the save
  EXPECT_TRUE(names_in(out.path()).empty());
}

TEST(CheckpointDir, CommitReplacesExistingFolder) {
  TempDir out;
  make_checkpoint(out.path(), "checkpoint-5", "old");
  write_file(out / "checkpoint-5" / "only_in_old", "1");
  auto dir = io::AtomicDir::begin((out / "checkpoint-5").string());
  io::write_file_synced(dir.file("trainer_state.json"), "new");
  dir.commit();
  EXPECT_EQ(names_in(out.path()), std::vector<std::string>{"checkpoint-5"});  // no .old-* left behind
  EXPECT_EQ(read_file(out / "checkpoint-5/trainer_state.json"), "new");
  EXPECT_FALSE(fs::exists(out / "checkpoint-5" / "only_in_old"));
}

TEST(CheckpointDir, BeginNeedsExistingParent) {
  TempDir out;
  std::string msg = error_of([&] { io::AtomicDir::begin((out / "missing/checkpoint-1").string()); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(CheckpointDir, StepFromName) {
  EXPECT_EQ(io::checkpoint_step_from_name("checkpoint-0"), 0);
  EXPECT_EQ(io::checkpoint_step_from_name("checkpoint-1200"), 1200);
  EXPECT_EQ(io::checkpoint_step_from_name("checkpoint-007"), 7);
  EXPECT_FALSE(io::checkpoint_step_from_name("checkpoint-"));
  EXPECT_FALSE(io::checkpoint_step_from_name("checkpoint-12a"));
  EXPECT_FALSE(io::checkpoint_step_from_name("checkpoint--3"));
  EXPECT_FALSE(io::checkpoint_step_from_name("checkpoint-best"));
  EXPECT_FALSE(io::checkpoint_step_from_name(".tmp-checkpoint-5-123"));
  EXPECT_FALSE(io::checkpoint_step_from_name("checkpoint-99999999999999999999999"));
}

TEST(CheckpointDir, FindLastCheckpointPicksHighestStep) {
  TempDir out;
  EXPECT_EQ(io::find_last_checkpoint(out.str()), "");
  EXPECT_EQ(io::find_last_checkpoint((out / "does-not-exist").string()), "");
  make_checkpoint(out.path(), "checkpoint-9");
  make_checkpoint(out.path(), "checkpoint-10");  // lexically smaller than -9, numerically larger
  make_checkpoint(out.path(), "checkpoint-best");
  make_checkpoint(out.path(), ".tmp-checkpoint-500-42");
  write_file(out / "checkpoint-999", "a file, not a folder");
  write_file(out / "adapter_model.safetensors", "");
  EXPECT_EQ(io::find_last_checkpoint(out.str()), (out / "checkpoint-10").string());
  std::vector<std::string> listed = io::list_checkpoints(out.str());
  EXPECT_EQ(listed, (std::vector<std::string>{(out / "checkpoint-9").string(), (out / "checkpoint-10").string()}));
}

TEST(CheckpointDir, FindLastCheckpointRefusesOnlyInvalidMatches) {
  TempDir out;
  make_checkpoint(out.path(), "checkpoint-foo");
  std::string msg = error_of([&] { io::find_last_checkpoint(out.str()); });
  EXPECT_NE(msg.find("No valid checkpoint found in output directory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint-foo"), std::string::npos) << msg;

  TempDir out2;  // a *file* named like a checkpoint also triggers FastChat's glob
  write_file(out2 / "checkpoint-3", "");
  EXPECT_THROW(io::find_last_checkpoint(out2.str()), core::Error);
}

TEST(CheckpointDir, RotateKeepsNewestBySteps) {
  TempDir out;
  for (int step : {5, 10, 50, 100, 200}) make_checkpoint(out.path(), "checkpoint-" + std::to_string(step));
  EXPECT_TRUE(io::rotate_checkpoints(out.str(), 0).empty());  // no limit
  EXPECT_TRUE(io::rotate_checkpoints(out.str(), 5).empty());
  auto removed = io::rotate_checkpoints(out.str(), 2);
  EXPECT_EQ(removed, (std::vector<std::string>{(out / "checkpoint-5").string(), (out / "checkpoint-10").string(),
                                               (out / "checkpoint-50").string()}));
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"checkpoint-100", "checkpoint-200"}));
}

TEST(CheckpointDir, RotateKeepsBestCheckpoint) {
  TempDir out;
  for (int step : {100, 200, 300, 400}) make_checkpoint(out.path(), "checkpoint-" + std::to_string(step));
  io::rotate_checkpoints(out.str(), 2, (out / "checkpoint-100").string());
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"checkpoint-100", "checkpoint-400"}));

  // limit 1 and best is not the newest: HF keeps two
  make_checkpoint(out.path(), "checkpoint-500");
  io::rotate_checkpoints(out.str(), 1, "checkpoint-100");
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"checkpoint-100", "checkpoint-500"}));

  // limit 1 and best is the newest: only it stays
  io::rotate_checkpoints(out.str(), 1, (out / "checkpoint-500/").string());
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"checkpoint-500"}));
}

// A process that dies between begin() and commit() (kill -9, power loss) leaves its temp folder behind.
// The resume must not see it, and the next start removes it.
TEST(CheckpointDir, CrashedSaveIsIgnoredAndCleaned) {
  TempDir out;
  make_checkpoint(out.path(), "checkpoint-100", "complete");
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto dir = io::AtomicDir::begin((out / "checkpoint-200").string());
    io::write_file_synced(dir.file("trainer_state.json"), "half");
    _exit(0);  // no destructor, no commit: what a crash leaves
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  std::string leftover = ".tmp-checkpoint-200-" + std::to_string(child);
  ASSERT_TRUE(fs::is_directory(out / leftover));

  EXPECT_EQ(io::find_last_checkpoint(out.str()), (out / "checkpoint-100").string());
  auto actions = io::remove_stale_temp_dirs(out.str());
  EXPECT_EQ(actions, std::vector<std::string>{"removed " + (out / leftover).string()});
  EXPECT_EQ(names_in(out.path()), std::vector<std::string>{"checkpoint-100"});
  EXPECT_TRUE(io::remove_stale_temp_dirs(out.str()).empty());
}

// A crash inside commit() after the old folder was set aside but before the new one took its name.
TEST(CheckpointDir, CrashDuringReplaceRestoresOldFolder) {
  TempDir out;
  make_checkpoint(out.path(), ".old-checkpoint-300-4242", "old complete");
  make_checkpoint(out.path(), ".tmp-checkpoint-300-4242", "new complete");
  make_checkpoint(out.path(), ".del-checkpoint-100-4242", "being deleted");
  make_checkpoint(out.path(), ".old-checkpoint-200-77", "replaced");
  make_checkpoint(out.path(), "checkpoint-200", "replacement in place");
  auto actions = io::remove_stale_temp_dirs(out.str());
  EXPECT_EQ(actions.size(), 4u);
  EXPECT_EQ(names_in(out.path()), (std::vector<std::string>{"checkpoint-200", "checkpoint-300"}));
  EXPECT_EQ(read_file(out / "checkpoint-300/trainer_state.json"), "old complete");
  EXPECT_EQ(read_file(out / "checkpoint-200/trainer_state.json"), "replacement in place");
}
