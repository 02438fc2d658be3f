#include "core/op_profile.h"

#include <algorithm>
#include <array>
#include <cstdio>

namespace zerolora::core {

namespace {
bool g_on = false;
std::function<void()> g_sync;
std::array<double, size_t(Op::Count)> g_seconds{};
}  // namespace

const char* op_name(Op op) {
  static const char* names[] = {"frozen GEMM", "frozen GEMM backward", "LoRA", "attention", "attention backward",
                                "RMSNorm", "RoPE", "SwiGLU", "cross-entropy", "elementwise", "communication",
                                "optimizer"};
  static_assert(sizeof(names) / sizeof(names[0]) == size_t(Op::Count));
  return names[int(op)];
}

void set_op_profiling(bool on) { g_on = on; }
void set_op_timer_sync(std::function<void()> sync) { g_sync = std::move(sync); }
void op_timer_sync() {
  if (g_sync) g_sync();
}
bool op_profiling() { return g_on; }
void reset_op_profile() { g_seconds.fill(0.0); }
void add_op_seconds(Op op, double seconds) { g_seconds[size_t(op)] += seconds; }

std::vector<std::pair<std::string, double>> op_profile_seconds() {
  std::vector<std::pair<std::string, double>> out;
  for (int i = 0; i < int(Op::Count); ++i) out.push_back({op_name(Op(i)), g_seconds[size_t(i)]});
  return out;
}

std::string op_profile_summary() {
  auto all = op_profile_seconds();
  double total = 0;
  for (const auto& [name, s] : all) total += s;
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  for (const auto& [name, s] : all) {
    if (total <= 0 || s / total < 0.0005) continue;
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s%s %.1f %% (%.2f s)", out.empty() ? "" : ", ", name.c_str(), 100 * s / total, s);
    out += buf;
  }
  return out;
}

}  // namespace zerolora::core
