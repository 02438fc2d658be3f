// Helpers shared by the tests: temporary folders, the optional ../shared folder, the zerolora binary.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

namespace zerolora::test {

// A fresh empty folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// ../shared beside the checkout (CI has it; a fresh clone does not). Empty when absent.
std::string shared_dir();

// Path of a file under ../shared, or "" when ../shared or the file is absent.
std::string shared_path(const std::string& relative);

// The zerolora executable built with the tests.
std::string zerolora_binary();

// Runs a shell command, returns its exit status; stdout+stderr go to *output when given.
int run_command(const std::string& command, std::string* output = nullptr);

std::string read_file(const std::filesystem::path& path);

// The message of the core::Error fn throws; fails the test when it throws nothing or something else.
std::string error_of(const std::function<void()>& fn);
void write_file(const std::filesystem::path& path, const std::string& content);

}  // namespace zerolora::test

// Skips the current test with a clear message when a file under ../shared is missing.
#define ZL_REQUIRE_SHARED(var, relative)                                                        \
  std::string var = ::zerolora::test::shared_path(relative);                                    \
  if (var.empty()) GTEST_SKIP() << "needs ../shared/" << (relative)                             \
                               << " (absent in a plain clone; CI provides it)"
