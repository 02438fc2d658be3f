// The one-process Comm, argument checking shared by every backend, options from the environment, and
// the watchdog's message (pure text, so checked here without a hung job).
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/comm.h"
#include "dist/consistency.h"
#include "dist/solo_comm.h"
#include "dist/watchdog_report.h"
#include "mpi_test_support.h"

using namespace zerolora::dist;
using zerolora::core::Error;

TEST(MakeComm, SoloWithoutMpirun) {
  ZL_SKIP_IN_MPI_WORKER();
  if (launched_by_mpi()) GTEST_SKIP() << "this test process itself runs under an MPI launcher";
  auto comm = make_comm();
  EXPECT_EQ(comm->backend(), "solo");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
}

TEST(SoloComm, CollectivesAreIdentityOrCopy) {
  SoloComm comm;
  std::vector<float> data{1.5f, -2, 3};
  comm.all_reduce_sum(data);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2, 3}));

  std::vector<uint16_t> bf16{zerolora::core::f32_to_bf16(0.5f), zerolora::core::f32_to_bf16(-4)};
  auto before = bf16;
  comm.all_reduce_sum(bf16);
  EXPECT_EQ(bf16, before);

  std::vector<float> out(3, 0);
  comm.reduce_scatter_sum(data, out);
  EXPECT_EQ(out, data);
  std::fill(out.begin(), out.end(), 0);
  std::vector<int64_t> counts{3};
  comm.reduce_scatter_sum_uneven(data, out, counts);
  EXPECT_EQ(out, data);
  std::fill(out.begin(), out.end(), 0);
  comm.all_gather(data, out);
  EXPECT_EQ(out, data);
  std::vector<uint16_t> bf16_out(2);
  comm.all_gather(bf16, bf16_out);
  EXPECT_EQ(bf16_out, bf16);

  comm.broadcast(data, 0);
  EXPECT_EQ(data, (std::vector<float>{1.5f, -2, 3}));
  comm.barrier();
  EXPECT_EQ(comm.all_reduce(2.5, ScalarOp::Sum), 2.5);
  EXPECT_EQ(comm.all_reduce(int64_t(7), ScalarOp::Max), 7);
  EXPECT_EQ(comm.all_gather_bytes("abc"), (std::vector<std::string>{"abc"}));
  std::string blob = "config";
  comm.broadcast_bytes(&blob, 0);
  EXPECT_EQ(blob, "config");

  Request request = comm.all_reduce_sum_async(data);
  EXPECT_TRUE(request.test());
  request.wait();  // waiting again is fine
}

TEST(SoloComm, RejectsMismatchedSizesAndRoots) {
  SoloComm comm;
  std::vector<float> in(4), out(3);
  EXPECT_THROW(comm.reduce_scatter_sum(in, out), Error);
  EXPECT_THROW(comm.all_gather(in, out), Error);
  std::vector<int64_t> two_counts{2, 2};
  EXPECT_THROW(comm.reduce_scatter_sum_uneven(in, out, two_counts), Error);
  EXPECT_THROW(comm.broadcast(in, 1), Error);
  std::string blob;
  EXPECT_THROW(comm.broadcast_bytes(&blob, -1), Error);
}

TEST(SoloComm, StatsCountPayloadAndNoRingBytes) {
  SoloComm comm;
  std::vector<float> data(10);
  std::vector<uint16_t> half(6), half_out(6);
  comm.all_reduce_sum(data);
  comm.all_reduce_sum(half);
  comm.all_gather(half, half_out);
  EXPECT_EQ(comm.stats().all_reduce.calls, 2);
  EXPECT_EQ(comm.stats().all_reduce.payload_bytes, 40 + 12);
  EXPECT_EQ(comm.stats().all_gather.payload_bytes, 12);
  EXPECT_EQ(comm.stats().ring_bytes_sent(), 0);  // one rank sends nothing
  comm.reset_stats();
  EXPECT_EQ(comm.stats().all_reduce.calls, 0);
}

TEST(SoloComm, ConsistencyCheckPasses) {
  SoloComm comm;
  EXPECT_NO_THROW(check_same_on_all_ranks(comm, "model", "llama"));
}

namespace {
// Sets an environment variable for one test and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old) old_ = old, had_ = true;
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1); else unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};
}  // namespace

TEST(CommOptions, TimeoutFromEnvironment) {
  {
    ScopedEnv env("ZEROLORA_COLLECTIVE_TIMEOUT_S", nullptr);
    EXPECT_EQ(CommOptions::from_env().collective_timeout_s, 300);
  }
  {
    ScopedEnv env("ZEROLORA_COLLECTIVE_TIMEOUT_S", "12.5");
    EXPECT_EQ(CommOptions::from_env().collective_timeout_s, 12.5);
  }
  {
    ScopedEnv env("ZEROLORA_COLLECTIVE_TIMEOUT_S", "0");
    EXPECT_EQ(CommOptions::from_env().collective_timeout_s, 0);
  }
  for (const char* bad : {"abc", "-1", "5s", "inf"}) {
    ScopedEnv env("ZEROLORA_COLLECTIVE_TIMEOUT_S", bad);
    try {
      CommOptions::from_env();
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ZEROLORA_COLLECTIVE_TIMEOUT_S"), std::string::npos);
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos);
    }
  }
}

TEST(WatchdogMessage, NamesLateRanksAndWhy) {
  std::vector<RankStatus> others(5);
  others[1] = {true, 18, 17, int64_t(CollectiveName::AllReduceSum), int64_t(CollectiveName::AllReduceSum)};
  // others[2]: no answer
  others[3] = {true, 17, 16, int64_t(CollectiveName::Barrier), -1};  // has not issued #17 yet
  others[4] = {true, 18, 17, int64_t(CollectiveName::AllGather), int64_t(CollectiveName::AllGather)};
  std::string m = collective_timeout_message(0, CollectiveName::AllReduceSum, 17, 2.04, 2, others);
  EXPECT_EQ(m,
            "rank 0: collective all_reduce_sum #17 timed out after 2.0 s waiting for ranks 2, 3, 4 "
            "(rank 2: no answer (busy outside MPI, stuck, or dead); rank 3: has not reached it, "
            "waiting in barrier #16; rank 4: its collective #17 is all_gather (the ranks called "
            "collectives in different orders)); (fix: if those ranks are legitimately slow here "
            "(loading a model, a long evaluation), raise ZEROLORA_COLLECTIVE_TIMEOUT_S (now 2.0 s); "
            "otherwise look in their output for what stopped them)");
}

TEST(WatchdogMessage, EveryRankArrived) {
  std::vector<RankStatus> others(2);
  others[0] = {true, 4, 3, int64_t(CollectiveName::Broadcast), int64_t(CollectiveName::Broadcast)};
  std::string m = collective_timeout_message(1, CollectiveName::Broadcast, 3, 10, 10, others);
  EXPECT_NE(m.find("rank 1: collective broadcast #3 timed out after 10.0 s waiting for ranks (none "
                   "identified"),
            std::string::npos)
      << m;
}
