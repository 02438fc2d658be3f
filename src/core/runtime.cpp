#include "core/runtime.h"

#include <malloc.h>
#include <sched.h>

#include <omp.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

namespace zerolora::core {

// 0 = OMP_NUM_THREADS when it is set (OpenMP has read it already), else the CPUs this process may run on:
// its affinity mask, which mpirun's --bind-to and taskset set, so ranks bound to their own cores do not
// oversubscribe them.
int default_num_threads() {
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env != nullptr && std::atoi(env) > 0) return omp_get_max_threads();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return int(std::thread::hardware_concurrency());
}

void set_num_threads(int n) {
  if (n <= 0) n = default_num_threads();
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
