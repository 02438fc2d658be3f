// Process-wide runtime settings: threads and wall-clock timing, resident memory.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace zerolora::core {

// Sets the OpenMP thread count used by our kernels and oneDNN (0 = default_num_threads()).
void set_num_threads(int n);
// OMP_NUM_THREADS when set, else the number of CPUs in this process's affinity mask (mpirun's binding).
int default_num_threads();
int num_threads();

// Resident set size now and at its peak, in bytes (from /proc/self/status).
int64_t current_rss_bytes();
int64_t peak_rss_bytes();

// Makes every allocation of at least `bytes` its own mapping, returned to the system when freed. glibc
// otherwise raises its mmap threshold after the first large free (up to 32 MiB), so tensors loaded and
// freed one by one (a model read block by block, ZeRO-3 keeping only slices) land on the heap, where
// the small long-lived allocations between them keep the freed memory resident. Call once at start.
void return_large_frees_to_system(size_t bytes = size_t(1) << 20);

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
