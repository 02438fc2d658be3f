// Running MPI tests from a plain `ctest`: a launcher test starts `mpirun -np N <this binary>
// --gtest_filter=<worker tests>` with ZEROLORA_DIST_TEST_WORKER=1 in the ranks' environment and checks
// the job's exit status and output; the worker tests skip unless that variable is set.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dist/comm.h"

namespace zerolora::test {

bool in_mpi_worker();

// The MpiComm shared by every worker test in this process (MPI can be initialised only once per
// process); finalised by a gtest environment after the last test.
dist::Comm& worker_comm();

struct MpiRun {
  int exit_code = -1;
  std::string output;  // stdout + stderr of mpirun and every rank
  double seconds = 0;
};

// Runs the worker tests matching gtest_filter on `ranks` ranks. env: extra NAME=VALUE pairs for the
// ranks. The job is killed after timeout_s so a broken test cannot hang ctest.
MpiRun run_mpi_workers(int ranks, const std::string& gtest_filter,
                       const std::vector<std::string>& env = {}, int timeout_s = 60);

// How many ranks printed gtest's "[  PASSED  ]" summary, i.e. finished every selected test.
int count_passed_ranks(const std::string& output);

}  // namespace zerolora::test

#define ZL_REQUIRE_MPI_WORKER()                      \
  if (!::zerolora::test::in_mpi_worker())            \
  GTEST_SKIP() << "a worker test: run under mpirun by the DistMpi launcher tests"

#define ZL_SKIP_IN_MPI_WORKER() \
  if (::zerolora::test::in_mpi_worker()) GTEST_SKIP() << "launcher test: not inside a worker"
