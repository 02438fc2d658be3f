#include "test_util.h"

#include "core/error.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

namespace zerolora::test {

TempDir::TempDir() {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path();
  for (int i = 0; i < 100; ++i) {
    auto p = base / ("zerolora-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
    if (std::filesystem::create_directory(p)) { path_ = p; return; }
  }
  throw std::runtime_error("could not create a temp dir");
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string shared_dir() {
  const char* env = std::getenv("ZEROLORA_SHARED_DIR");
  std::string dir = env ? env : ZEROLORA_SHARED_DIR;
  return std::filesystem::is_directory(dir) ? dir : "";
}

std::string shared_path(const std::string& relative) {
  std::string dir = shared_dir();
  if (dir.empty()) return "";
  auto p = std::filesystem::path(dir) / relative;
  return std::filesystem::exists(p) ? p.string() : "";
}

std::string zerolora_binary() {
  const char* env = std::getenv("ZEROLORA_BINARY");  // a wrapper (scripts/gpu-check.sh runs carried binaries)
  return env && *env ? env : ZEROLORA_BINARY;
}

int run_command(const std::string& command, std::string* output) {
  std::string cmd = command + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int status = pclose(pipe);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::filesystem::path& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  f << content;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const core::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-core::Error: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

}  // namespace zerolora::test
