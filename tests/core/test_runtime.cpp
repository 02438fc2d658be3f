#include <gtest/gtest.h>
#include <sched.h>

#include <cstdlib>
#include <string>

#include "core/runtime.h"

namespace zerolora::core {
namespace {

// Restores the process's affinity mask and OMP_NUM_THREADS whatever the test does.
struct AffinityGuard {
  cpu_set_t saved;
  std::string omp;
  bool had_omp;
  AffinityGuard() {
    sched_getaffinity(0, sizeof(saved), &saved);
    const char* e = std::getenv("OMP_NUM_THREADS");
    had_omp = e != nullptr;
    if (had_omp) omp = e;
  }
  ~AffinityGuard() {
    sched_setaffinity(0, sizeof(saved), &saved);
    if (had_omp) setenv("OMP_NUM_THREADS", omp.c_str(), 1); else unsetenv("OMP_NUM_THREADS");
  }
};

// --num_threads 0 under mpirun's default binding (one core per rank) must not run every core's worth of
// threads on that one core: the default counts the CPUs of the affinity mask.
TEST(Runtime, DefaultThreadsFollowTheAffinityMask) {
  AffinityGuard guard;
  unsetenv("OMP_NUM_THREADS");
  int first = -1;
  for (int c = 0; c < CPU_SETSIZE && first < 0; ++c)
    if (CPU_ISSET(c, &guard.saved)) first = c;
  ASSERT_GE(first, 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(default_num_threads(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(guard.saved), &guard.saved), 0);
  EXPECT_EQ(default_num_threads(), CPU_COUNT(&guard.saved));
}

}  // namespace
}  // namespace zerolora::core
