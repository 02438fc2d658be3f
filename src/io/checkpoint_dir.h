// Checkpoint folders on disk: written atomically, found, rotated, and cleaned after a crash.
//
// A checkpoint is a folder `<output_dir>/checkpoint-<global_step>` (HF Trainer's name). It is built in a
// hidden temp folder and renamed into place only when every file is on disk, so a crash at any moment leaves
// either the previous complete checkpoint or the new complete one, never a half-written `checkpoint-N`
// (DESIGN.md decision 8). The rename is the "completion marker" of llm.c's checkpoint layout.
//
// Hidden names this file uses inside output_dir (none of them matches HF's `checkpoint-*` glob):
//   .tmp-<name>-<pid>   a folder being written          (crash: removed by remove_stale_temp_dirs)
//   .old-<name>-<pid>   the previous <name>, set aside   (crash: restored if <name> is missing, else removed)
//   .del-<name>-<pid>   a rotated-out checkpoint         (crash: removed)
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::io {

// Writes bytes to path (created or truncated) and fsyncs the file before returning.
void write_file_synced(const std::string& path, std::string_view bytes);

// fsyncs a folder, so that the names created, renamed or removed in it are durable.
void fsync_dir(const std::string& dir_path);

// A folder that appears under its final name only when commit() has made its content durable.
//
//   auto dir = AtomicDir::begin(out + "/checkpoint-200");
//   write_file_synced(dir.file("trainer_state.json"), text);   // any writer may fill dir.temp_path()
//   dir.commit();                                              // now checkpoint-200 exists, complete
//
// Without commit() the destructor removes the temp folder (an exception on the way leaves no trace).
class AtomicDir {
 public:
  // Creates <parent>/.tmp-<name>-<pid> (replacing a leftover of the same name); parent must exist.
  static AtomicDir begin(const std::string& final_path);

  AtomicDir(AtomicDir&& other) noexcept;
  AtomicDir& operator=(AtomicDir&&) = delete;
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  ~AtomicDir();

  const std::string& temp_path() const { return temp_path_; }
  const std::string& final_path() const { return final_path_; }
  // temp_path()/relative_name: where a file of the finished folder is to be written now.
  std::string file(const std::string& relative_name) const;

  // fsyncs every file and folder inside, then renames the temp folder to the final name. An existing
  // folder of that name is replaced: it is renamed aside first and removed after the new one is in place.
  // Finally fsyncs the parent. Calling it twice is an error.
  void commit();
  bool committed() const { return committed_; }

 private:
  AtomicDir(std::string final_path, std::string temp_path);
  std::string final_path_;
  std::string temp_path_;
  bool committed_ = false;
};

// The step number of a folder name `checkpoint-<digits>` (HF's ^checkpoint-(\d+)$), or nullopt.
std::optional<int64_t> checkpoint_step_from_name(const std::string& folder_name);

// HF get_last_checkpoint as FastChat's train_lora uses it: the `checkpoint-<int>` folder of output_dir with
// the largest step. Returns "" when nothing in output_dir matches `checkpoint-*` (fresh start). Throws when
// something matches `checkpoint-*` but none is a valid checkpoint folder: FastChat then calls
// train(resume_from_checkpoint=True) and HF raises "No valid checkpoint found in output directory".
// Hidden temp folders (.tmp-*, .old-*, .del-*) never count. A missing output_dir returns "".
std::string find_last_checkpoint(const std::string& output_dir);

// All `checkpoint-<int>` folders of output_dir, ordered by step (oldest first), as full paths.
std::vector<std::string> list_checkpoints(const std::string& output_dir);

// HF save_total_limit rotation. Keeps the `save_total_limit` newest checkpoints and deletes the rest;
// best_checkpoint (a path or folder name; "" = none) is always kept: it is moved just before the newest in
// the order, and with a limit of 1 and best != newest both are kept (2 folders), as HF does.
// We order by step number, not by modification time as HF does: the step is what the folder name promises,
// and mtimes change when folders are copied or restored (HF itself falls back to step order when mtimes are
// within a second). A limit <= 0 keeps everything. Returns the removed folders (full paths).
std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t save_total_limit,
                                            const std::string& best_checkpoint = "");

// Cleans what a crash in AtomicDir::commit or rotate_checkpoints can leave in output_dir: removes
// .tmp-* and .del-* folders, and for each .old-<name>-<pid> either restores it as <name> (when the crash
// came after setting the old folder aside but before the new one took its name) or removes it. Call it on
// rank 0 before training starts, when no other process writes into output_dir. Returns what it removed or
// restored, one line each ("removed <path>", "restored <path>"), for the log.
std::vector<std::string> remove_stale_temp_dirs(const std::string& output_dir);

}  // namespace zerolora::io
