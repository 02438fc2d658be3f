#include "mpi_test_support.h"

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "core/runtime.h"
#include "test_util.h"

namespace zerolora::test {

namespace {

constexpr const char* kWorkerEnv = "ZEROLORA_DIST_TEST_WORKER";

std::unique_ptr<dist::Comm>& worker_comm_slot() {
  static std::unique_ptr<dist::Comm> comm;
  return comm;
}

// Finalises MPI before main() returns rather than from a static destructor.
class WorkerCommEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { worker_comm_slot().reset(); }
};
[[maybe_unused]] ::testing::Environment* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new WorkerCommEnvironment);

// The flags every launch uses, in one place:
//  --oversubscribe: CI has 2 cores and we run up to 4 ranks;
//  --bind-to none: binding oversubscribed ranks to cores only slows them down;
//  btl_vader_single_copy_mechanism none: containers often forbid the cross-process reads (CMA) that
//    OpenMPI's shared-memory transport uses for large messages;
//  OMPI_ALLOW_RUN_AS_ROOT*: CI runs as root, which mpirun refuses by default.
//  timeout: TERM first so mpirun can take its ranks down with it; KILL if it does not go.
std::string mpirun_command(int ranks, int timeout_s) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -k 10 " +
         std::to_string(timeout_s) +
         " mpirun --oversubscribe --bind-to none --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(ranks);
}

}  // namespace

bool in_mpi_worker() {
  const char* value = std::getenv(kWorkerEnv);
  return value && std::string(value) == "1";
}

dist::Comm& worker_comm() {
  auto& comm = worker_comm_slot();
  if (!comm) comm = dist::make_comm();
  return *comm;
}

// clang does not define __SANITIZE_ADDRESS__; it answers __has_feature instead (which GCC < 14 lacks)
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZL_CLANG_ASAN 1
#endif
#endif
#ifndef ZL_CLANG_ASAN
#define ZL_CLANG_ASAN 0
#endif

MpiRun run_mpi_workers(int ranks, const std::string& gtest_filter, const std::vector<std::string>& env,
                       int timeout_s) {
  // /proc/self/exe must be resolved here: inside the shell it would name the shell.
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string exports = " -x " + std::string(kWorkerEnv) + "=1";
#if defined(__SANITIZE_ADDRESS__) || ZL_CLANG_ASAN
  // OpenMPI leaks by design at MPI_Finalize (op tables, unloaded components); LeakSanitizer would fail
  // every rank for it. Address and UB checks stay on.
  const char* asan = std::getenv("ASAN_OPTIONS");
  exports += " -x ASAN_OPTIONS=" + std::string(asan && *asan ? std::string(asan) + ":" : "") +
             "detect_leaks=0";
#endif
  for (const auto& pair : env) exports += " -x " + pair;
  std::string command = mpirun_command(ranks, timeout_s) + exports + " " + self + " --gtest_color=no --gtest_filter='" + gtest_filter +
                        "'";
  MpiRun run;
  core::Timer timer;
  run.exit_code = run_command(command, &run.output);
  run.seconds = timer.seconds();
  return run;
}

int count_passed_ranks(const std::string& output) {
  int count = 0;
  for (size_t at = output.find("[  PASSED  ]"); at != std::string::npos;
       at = output.find("[  PASSED  ]", at + 1))
    ++count;
  return count;
}

}  // namespace zerolora::test
