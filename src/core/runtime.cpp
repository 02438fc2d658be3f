#include "core/runtime.h"

#include <malloc.h>

#include <omp.h>

#include <fstream>
#include <string>
#include <thread>

namespace zerolora::core {

void set_num_threads(int n) {
  if (n <= 0) n = int(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

static int64_t status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k(key);
  while (std::getline(f, line))
    if (line.compare(0, k.size(), k) == 0) return std::stoll(line.substr(k.size() + 1)) ;
  return 0;
}

int64_t current_rss_bytes() { return status_kb("VmRSS:") * 1024; }
int64_t peak_rss_bytes() { return status_kb("VmHWM:") * 1024; }

void return_large_frees_to_system(size_t bytes) { mallopt(M_MMAP_THRESHOLD, int(bytes)); }

}  // namespace zerolora::core
