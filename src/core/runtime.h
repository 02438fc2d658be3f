// Process-wide runtime settings: threads and wall-clock timing, resident memory.
#pragma once
#include <chrono>
#include <cstdint>

namespace zerolora::core {

// Sets the OpenMP thread count used by our kernels and oneDNN (0 = all cores).
void set_num_threads(int n);
int num_threads();

// Resident set size now and at its peak, in bytes (from /proc/self/status).
int64_t current_rss_bytes();
int64_t peak_rss_bytes();

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace zerolora::core
