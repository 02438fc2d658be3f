#include "io/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace zerolora::io {

namespace fs = std::filesystem;

namespace {

const char* kTempPrefix = ".tmp-";
const char* kAsidePrefix = ".old-";
const char* kDeletePrefix = ".del-";
const std::string kDiskFix = "check that the folder is writable and the disk is not full";

std::string errno_text() { return std::strerror(errno); }

void fsync_path(const std::string& path, int open_flags) {
  int fd = ::open(path.c_str(), open_flags | O_CLOEXEC);
  if (fd < 0) throw core::Error(path, "cannot open to fsync: " + errno_text(), kDiskFix);
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) throw core::Error(path, "fsync failed: " + errno_text(), kDiskFix);
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw core::Error(from.string(), "cannot rename to " + to.string() + ": " + errno_text(), kDiskFix);
}

// Hidden sibling name for `name` in the same folder: <prefix><name>-<pid>.
fs::path hidden_sibling(const fs::path& final_path, const char* prefix) {
  return final_path.parent_path() /
         (std::string(prefix) + final_path.filename().string() + "-" + std::to_string(::getpid()));
}

// "<name>" out of ".old-<name>-<pid>", or "" when the name does not have that shape.
std::string original_name_of_aside(const std::string& hidden_name) {
  std::string rest = hidden_name.substr(std::strlen(kAsidePrefix));
  size_t dash = rest.rfind('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) return "";
  for (size_t i = dash + 1; i < rest.size(); ++i)
    if (rest[i] < '0' || rest[i] > '9') return "";
  return rest.substr(0, dash);
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// Makes every file and folder below dir durable, deepest first, then dir itself.
void fsync_tree(const fs::path& dir) {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_symlink()) continue;
    if (entry.is_regular_file()) fsync_path(entry.path().string(), O_RDONLY);
    else if (entry.is_directory()) dirs.push_back(entry.path());
  }
  std::reverse(dirs.begin(), dirs.end());
  for (const auto& d : dirs) fsync_dir(d.string());
  fsync_dir(dir.string());
}

}  // namespace

void write_file_synced(const std::string& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw core::Error(path, "cannot create file: " + errno_text(), kDiskFix);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string why = errno_text();
      ::close(fd);
      throw core::Error(path, "write failed after " + std::to_string(done) + " of " +
                                  std::to_string(bytes.size()) + " bytes: " + why, kDiskFix);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw core::Error(path, "fsync failed: " + why, kDiskFix);
  }
  if (::close(fd) != 0) throw core::Error(path, "close failed: " + errno_text(), kDiskFix);
}

void fsync_dir(const std::string& dir_path) { fsync_path(dir_path, O_RDONLY | O_DIRECTORY); }

// ---------------------------------------------------------------------------------------------
// AtomicDir

AtomicDir::AtomicDir(std::string final_path, std::string temp_path)
    : final_path_(std::move(final_path)), temp_path_(std::move(temp_path)) {}

AtomicDir::AtomicDir(AtomicDir&& other) noexcept
    : final_path_(std::move(other.final_path_)),
      temp_path_(std::move(other.temp_path_)),
      committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object owns nothing to clean up
  other.temp_path_.clear();
}

AtomicDir AtomicDir::begin(const std::string& final_path) {
  fs::path final_p = fs::path(final_path).lexically_normal();
  if (final_p.filename().empty()) final_p = final_p.parent_path();  // "out/checkpoint-5/"
  fs::path parent = final_p.parent_path().empty() ? fs::path(".") : final_p.parent_path();
  if (!fs::is_directory(parent))
    throw core::Error(final_path, "parent folder " + parent.string() + " does not exist",
                      "create it first (the trainer creates --output_dir at start)");
  fs::path temp = hidden_sibling(parent / final_p.filename(), kTempPrefix);
  std::error_code ec;
  fs::remove_all(temp, ec);  // a leftover of this same process (an earlier failed attempt)
  if (!fs::create_directory(temp, ec) || ec)
    throw core::Error(temp.string(), "cannot create temp folder: " + ec.message(), kDiskFix);
  return AtomicDir((parent / final_p.filename()).string(), temp.string());
}

AtomicDir::~AtomicDir() {
  if (committed_ || temp_path_.empty()) return;
  std::error_code ec;
  fs::remove_all(temp_path_, ec);  // best effort: a leftover is cleaned by remove_stale_temp_dirs
}

std::string AtomicDir::file(const std::string& relative_name) const {
  return (fs::path(temp_path_) / relative_name).string();
}

void AtomicDir::commit() {
  core::check(!committed_, final_path_, "AtomicDir::commit called twice",
              "call begin() again for a new folder");
  fsync_tree(temp_path_);
  const fs::path final_p(final_path_);
  const fs::path parent = final_p.parent_path();
  std::error_code ec;
  if (fs::exists(fs::symlink_status(final_p, ec))) {
    // Replace: old -> aside, new -> final, then drop the aside copy. At every moment a complete folder
    // exists under the final name or under the aside name (remove_stale_temp_dirs restores it from there).
    fs::path aside = hidden_sibling(final_p, kAsidePrefix);
    fs::remove_all(aside, ec);
    rename_or_throw(final_p, aside);
    rename_or_throw(temp_path_, final_p);
    committed_ = true;
    fsync_dir(parent.string());  // the new name is durable before the old copy goes
    fs::remove_all(aside, ec);
    if (ec) throw core::Error(aside.string(), "cannot remove the replaced folder: " + ec.message(),
                              "remove it by hand; the new " + final_p.filename().string() + " is complete");
  } else {
    rename_or_throw(temp_path_, final_p);
    committed_ = true;
  }
  fsync_dir(parent.string());
}

// ---------------------------------------------------------------------------------------------
// Finding, rotating and cleaning checkpoints

std::optional<int64_t> checkpoint_step_from_name(const std::string& folder_name) {
  static const std::string prefix = "checkpoint-";
  if (folder_name.size() <= prefix.size() || folder_name.compare(0, prefix.size(), prefix) != 0)
    return std::nullopt;
  const char* first = folder_name.data() + prefix.size();
  const char* last = folder_name.data() + folder_name.size();
  for (const char* p = first; p != last; ++p)
    if (*p < '0' || *p > '9') return std::nullopt;
  int64_t step = 0;
  auto [end, err] = std::from_chars(first, last, step);
  if (err != std::errc() || end != last) return std::nullopt;  // too many digits for int64
  return step;
}

std::vector<std::string> list_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    auto step = checkpoint_step_from_name(entry.path().filename().string());
    if (step && entry.is_directory()) found.emplace_back(*step, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::string find_last_checkpoint(const std::string& output_dir) {
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return "";
  std::vector<std::string> glob_matches;  // what FastChat's output_dir.glob("checkpoint-*") sees
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    std::string name = entry.path().filename().string();
    if (starts_with(name, "checkpoint-")) glob_matches.push_back(name);
  }
  if (glob_matches.empty()) return "";
  std::vector<std::string> valid = list_checkpoints(output_dir);
  if (valid.empty()) {
    std::sort(glob_matches.begin(), glob_matches.end());
    throw core::Error(output_dir, "No valid checkpoint found in output directory (" + output_dir + "): " +
                                      glob_matches.front() +
                                      " matches checkpoint-* but is not a checkpoint-<step> folder",
                      "rename or remove it (FastChat resumes whenever checkpoint-* exists), or use a "
                      "new --output_dir");
  }
  return valid.back();
}

std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t save_total_limit,
                                            const std::string& best_checkpoint) {
  if (save_total_limit <= 0) return {};
  std::vector<std::string> ordered = list_checkpoints(output_dir);
  if (static_cast<int64_t>(ordered.size()) <= save_total_limit) return {};

  std::string best_name;
  if (!best_checkpoint.empty()) {
    fs::path best = fs::path(best_checkpoint).lexically_normal();
    best_name = (best.filename().empty() ? best.parent_path() : best).filename().string();
  }
  auto is_best = [&](const std::string& path) {
    return !best_name.empty() && fs::path(path).filename().string() == best_name;
  };
  // HF moves the best checkpoint to the second-to-last place, so it is deleted last but one.
  auto best_it = std::find_if(ordered.begin(), ordered.end(), is_best);
  if (best_it != ordered.end() && best_it + 1 != ordered.end()) {
    std::string best_path = *best_it;
    ordered.erase(best_it);
    ordered.insert(ordered.end() - 1, best_path);
  }
  int64_t keep = save_total_limit;
  if (!best_name.empty() && save_total_limit == 1 && !is_best(ordered.back())) keep = 2;

  std::vector<std::string> removed;
  const int64_t to_delete = std::max<int64_t>(0, static_cast<int64_t>(ordered.size()) - keep);
  for (int64_t i = 0; i < to_delete; ++i) {
    const fs::path doomed(ordered[i]);
    // Rename first (atomic), so a crash mid-delete leaves a hidden .del-* folder rather than a
    // checkpoint-N with half its files that a later resume could pick.
    const fs::path hidden = hidden_sibling(doomed, kDeletePrefix);
    std::error_code ec;
    fs::remove_all(hidden, ec);
    rename_or_throw(doomed, hidden);
    fs::remove_all(hidden, ec);
    if (ec) throw core::Error(hidden.string(), "cannot delete a rotated-out checkpoint: " + ec.message(),
                              kDiskFix);
    removed.push_back(doomed.string());
  }
  if (!removed.empty()) fsync_dir(output_dir);
  return removed;
}

std::vector<std::string> remove_stale_temp_dirs(const std::string& output_dir) {
  std::vector<std::string> actions;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return actions;
  std::vector<fs::path> temps, asides;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    std::string name = entry.path().filename().string();
    if (!entry.is_directory()) continue;
    if (starts_with(name, kTempPrefix) || starts_with(name, kDeletePrefix)) temps.push_back(entry.path());
    else if (starts_with(name, kAsidePrefix)) asides.push_back(entry.path());
  }
  for (const auto& aside : asides) {
    std::string original = original_name_of_aside(aside.filename().string());
    fs::path target = fs::path(output_dir) / original;
    if (!original.empty() && !fs::exists(fs::symlink_status(target, ec))) {
      rename_or_throw(aside, target);
      actions.push_back("restored " + target.string());
    } else {
      temps.push_back(aside);
    }
  }
  for (const auto& temp : temps) {
    fs::remove_all(temp, ec);
    if (ec) throw core::Error(temp.string(), "cannot remove a folder left by a crash: " + ec.message(),
                              "remove it by hand");
    actions.push_back("removed " + temp.string());
  }
  if (!actions.empty()) fsync_dir(output_dir);
  return actions;
}

}  // namespace zerolora::io
