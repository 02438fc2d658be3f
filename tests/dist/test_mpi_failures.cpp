// A dead or stuck rank must stop the whole job within seconds, with a message naming it. The
// DistFailureWorker.* tests are the misbehaving jobs (they are meant to die); DistMpi.* launch them
// and check how the job ended.
#include <gtest/gtest.h>

#include <csignal>
#include <thread>

#include "core/error.h"
#include "dist/comm.h"
#include "mpi_test_support.h"

using zerolora::test::worker_comm;

TEST(DistFailureWorker, OneRankKilledMidRun) {
  ZL_REQUIRE_MPI_WORKER();
  auto& comm = worker_comm();
  std::vector<float> data(1024, 1.f);
  for (int step = 0; step < 100000; ++step) {
    if (comm.rank() == 1 && step == 200) raise(SIGKILL);
    comm.all_reduce_sum(data);
  }
  ADD_FAILURE() << "rank " << comm.rank() << " outlived the killed rank";
}

TEST(DistFailureWorker, OneRankStallsOutsideCollectives) {
  ZL_REQUIRE_MPI_WORKER();
  auto& comm = worker_comm();
  std::vector<float> data(1024, 1.f);
  for (int step = 0; step < 10; ++step) comm.all_reduce_sum(data);
  // The last rank "hangs" (a deadlock, a stuck read) while the others wait for it in a collective.
  if (comm.rank() == comm.size() - 1) std::this_thread::sleep_for(std::chrono::seconds(60));
  comm.all_reduce_sum(data);
  ADD_FAILURE() << "rank " << comm.rank() << " was not stopped by the watchdog";
}

// An exception on one rank while the others wait in a collective: its Comm is destroyed during
// unwinding and must not call MPI_Finalize (OpenMPI's finalize waits for every rank, which would hang
// the job); the process exits non-zero and mpirun stops the rest.
TEST(DistFailureWorker, OneRankThrows) {
  ZL_REQUIRE_MPI_WORKER();
  auto comm = zerolora::dist::make_comm();
  std::vector<float> data(16, 1.f);
  comm->all_reduce_sum(data);
  if (comm->rank() == 1) throw zerolora::core::Error("rank 1", "simulated failure on one rank");
  comm->all_reduce_sum(data);  // the other ranks wait here for rank 1
  ADD_FAILURE() << "rank " << comm->rank() << " outlived the failed rank";
}

TEST(DistMpi, ExceptionOnOneRankStopsEveryRankWithoutWatchdog) {
  ZL_SKIP_IN_MPI_WORKER();
  auto run = zerolora::test::run_mpi_workers(3, "DistFailureWorker.OneRankThrows",
                                             {"ZEROLORA_COLLECTIVE_TIMEOUT_S=20"}, 60);
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_LT(run.seconds, 15) << run.output;  // well before the 20 s watchdog
  EXPECT_NE(run.output.find("rank 1: simulated failure on one rank"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("timed out"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("outlived the failed rank"), std::string::npos) << run.output;
  std::cout << "[ info ] job stopped " << run.seconds << " s after launch\n";
}

TEST(DistMpi, KilledRankStopsEveryRank) {
  ZL_SKIP_IN_MPI_WORKER();
  auto run = zerolora::test::run_mpi_workers(3, "DistFailureWorker.OneRankKilledMidRun",
                                             {"ZEROLORA_COLLECTIVE_TIMEOUT_S=20"}, 60);
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_LT(run.seconds, 30) << run.output;
  // mpirun (OpenMPI 4.1) names the rank: "process rank 1 with PID ... exited on signal 9 (Killed)"
  EXPECT_NE(run.output.find("rank 1"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("signal 9"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("outlived the killed rank"), std::string::npos) << run.output;
  std::cout << "[ info ] job stopped " << run.seconds << " s after launch\n";
}

TEST(DistMpi, StalledRankIsNamedByTheWatchdog) {
  ZL_SKIP_IN_MPI_WORKER();
  auto run = zerolora::test::run_mpi_workers(3, "DistFailureWorker.OneRankStallsOutsideCollectives",
                                             {"ZEROLORA_COLLECTIVE_TIMEOUT_S=2"}, 60);
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_LT(run.seconds, 30) << run.output;  // the stalled rank sleeps 60 s: it was killed
  EXPECT_NE(run.output.find(": collective all_reduce_sum #"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("timed out after 2."), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("waiting for ranks 2 (rank 2: no answer"), std::string::npos) << run.output;
  // (mpirun's own "MPI_ABORT was invoked" banner is not checked: OpenMPI 4.1 sometimes drops it with
  // "ORTE_ERROR_LOG: Data unpack had inadequate space" when two ranks abort at the same moment.)
  EXPECT_EQ(run.output.find("was not stopped by the watchdog"), std::string::npos) << run.output;
  std::cout << "[ info ] job stopped " << run.seconds << " s after launch\n";
}
