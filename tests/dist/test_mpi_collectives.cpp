// Collectives under mpirun. DistMpi.Workers* launch this binary on 2, 3 and 4 ranks running the
// DistWorker.* tests, which check every collective (blocking and non-blocking, fp32 and bf16) against
// arithmetic each rank can predict, and that all ranks end with identical bits.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/consistency.h"
#include "dist/zero_cost.h"
#include "dist/zero_partition.h"
#include "mpi_test_support.h"

using namespace zerolora::dist;
using zerolora::core::bf16_to_f32;
using zerolora::core::f32_to_bf16;
using zerolora::test::worker_comm;

namespace {

// Sum over ranks of (rank + 1): the factor every rank-scaled input picks up in a reduction.
int64_t rank_weight_sum(int world) { return int64_t(world) * (world + 1) / 2; }

// Integer-valued inputs keep every partial sum exact, so any reduction order gives the same answer.
float exact_input(int rank, int64_t i) { return float((rank + 1) * (i % 13 + 1)); }

std::vector<float> random_floats(uint32_t seed, size_t n) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// True when every rank holds the same bytes in `data` (checked by gathering everyone's copy).
template <typename T>
bool identical_on_all_ranks(Comm& comm, const std::vector<T>& data) {
  std::vector<T> all(data.size() * comm.size());
  comm.all_gather(std::span<const T>(data), std::span<T>(all));
  for (int r = 0; r < comm.size(); ++r)
    if (std::memcmp(all.data() + r * data.size(), data.data(), data.size() * sizeof(T)) != 0) return false;
  return true;
}

}  // namespace

TEST(DistWorker, BackendAndRanks) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  EXPECT_EQ(comm.backend(), "mpi");
  EXPECT_EQ(comm.size(), std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")));
  auto names = comm.all_gather_bytes(std::to_string(comm.rank()));
  ASSERT_EQ(int(names.size()), comm.size());
  for (int r = 0; r < comm.size(); ++r) EXPECT_EQ(names[r], std::to_string(r));
}

TEST(DistWorker, AllReduceFloatExact) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int n_ranks = comm.size();
  for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(1001), size_t(65537), size_t(400 * n_ranks)}) {
    for (bool async : {false, true}) {
      std::vector<float> data(n);
      for (size_t i = 0; i < n; ++i) data[i] = exact_input(comm.rank(), int64_t(i));
      if (async) {
        Request request = comm.all_reduce_sum_async(data);
        request.wait();
      } else {
        comm.all_reduce_sum(data);
      }
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i)
        wrong += data[i] != float((i % 13 + 1) * rank_weight_sum(n_ranks));
      EXPECT_EQ(wrong, 0u) << "n " << n << (async ? " async" : " blocking");
    }
  }
}

TEST(DistWorker, AllReduceBf16Exact) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  for (size_t n : {size_t(1), size_t(7), size_t(1001), size_t(4099)}) {
    for (bool async : {false, true}) {
      // at most 5 * (1+2+3+4) = 50: exact in bf16's 8-bit significand at every partial sum
      std::vector<uint16_t> data(n);
      for (size_t i = 0; i < n; ++i) data[i] = f32_to_bf16(float((comm.rank() + 1) * (i % 5 + 1)));
      if (async) comm.all_reduce_sum_async(data).wait();
      else comm.all_reduce_sum(data);
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i)
        wrong += bf16_to_f32(data[i]) != float((i % 5 + 1) * rank_weight_sum(comm.size()));
      EXPECT_EQ(wrong, 0u) << "n " << n;
    }
  }
}

TEST(DistWorker, AllReduceGivesIdenticalBitsOnEveryRank) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const size_t n = 100003;
  std::vector<float> data = random_floats(100 + comm.rank(), n);
  comm.all_reduce_sum(data);
  EXPECT_TRUE(identical_on_all_ranks(comm, data));
  // and it is the sum: every rank can regenerate every rank's input
  std::vector<double> reference(n, 0);
  for (int r = 0; r < comm.size(); ++r) {
    auto input = random_floats(100 + r, n);
    for (size_t i = 0; i < n; ++i) reference[i] += input[i];
  }
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(double(data[i]) - reference[i]));
  EXPECT_LT(worst, 1e-5);

  std::vector<uint16_t> bf16(n);
  auto values = random_floats(200 + comm.rank(), n);
  for (size_t i = 0; i < n; ++i) bf16[i] = f32_to_bf16(values[i]);
  comm.all_reduce_sum(bf16);
  EXPECT_TRUE(identical_on_all_ranks(comm, bf16));
}

TEST(DistWorker, ReduceScatter) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int world = comm.size(), rank = comm.rank();
  for (size_t chunk : {size_t(1), size_t(1000)}) {
    const size_t n = chunk * world;
    std::vector<float> input(n);
    std::vector<uint16_t> bf16_input(n);
    for (size_t i = 0; i < n; ++i) {
      input[i] = float((rank + 1) * (i % 11 + 1));
      bf16_input[i] = f32_to_bf16(float((rank + 1) * (i % 5 + 1)));
    }
    for (bool async : {false, true}) {
      std::vector<float> out(chunk, -1);
      std::vector<uint16_t> bf16_out(chunk, 0);
      if (async) {
        Request a = comm.reduce_scatter_sum_async(input, out);
        Request b = comm.reduce_scatter_sum_async(bf16_input, bf16_out);
        b.wait();
        a.wait();
      } else {
        comm.reduce_scatter_sum(input, out);
        comm.reduce_scatter_sum(bf16_input, bf16_out);
      }
      size_t wrong = 0;
      for (size_t j = 0; j < chunk; ++j) {
        size_t i = rank * chunk + j;  // rank r receives chunk r
        wrong += out[j] != float((i % 11 + 1) * rank_weight_sum(world));
        wrong += bf16_to_f32(bf16_out[j]) != float((i % 5 + 1) * rank_weight_sum(world));
      }
      EXPECT_EQ(wrong, 0u) << "chunk " << chunk << (async ? " async" : " blocking");
    }
  }
}

TEST(DistWorker, AllGather) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int world = comm.size(), rank = comm.rank();
  for (size_t chunk : {size_t(1), size_t(999)}) {
    std::vector<float> input(chunk);
    std::vector<uint16_t> bf16_input(chunk);
    for (size_t j = 0; j < chunk; ++j) {
      input[j] = float(rank * 100000 + j);
      bf16_input[j] = f32_to_bf16(float(rank * 16 + j % 16));  // < 256: exact in bf16
    }
    for (bool async : {false, true}) {
      std::vector<float> out(chunk * world, -1);
      std::vector<uint16_t> bf16_out(chunk * world, 0);
      if (async) {
        Request a = comm.all_gather_async(input, out);
        Request b = comm.all_gather_async(bf16_input, bf16_out);
        a.wait();
        b.wait();
      } else {
        comm.all_gather(input, out);
        comm.all_gather(bf16_input, bf16_out);
      }
      size_t wrong = 0;
      for (int r = 0; r < world; ++r)
        for (size_t j = 0; j < chunk; ++j) {
          wrong += out[r * chunk + j] != float(r * 100000 + j);
          wrong += bf16_to_f32(bf16_out[r * chunk + j]) != float(r * 16 + j % 16);
        }
      EXPECT_EQ(wrong, 0u) << "chunk " << chunk;
    }
  }
}

TEST(DistWorker, BroadcastFromLastRank) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int root = comm.size() - 1;
  const bool is_root = comm.rank() == root;
  std::vector<float> data(777, is_root ? 0.f : -1.f);
  std::vector<uint16_t> bf16(33, is_root ? 0 : 0xFFFF);
  if (is_root) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = float(i) * 0.5f;
    for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(float(i));
  }
  comm.broadcast(data, root);
  comm.broadcast(bf16, root);
  size_t wrong = 0;
  for (size_t i = 0; i < data.size(); ++i) wrong += data[i] != float(i) * 0.5f;
  for (size_t i = 0; i < bf16.size(); ++i) wrong += bf16_to_f32(bf16[i]) != float(i);
  EXPECT_EQ(wrong, 0u);

  std::string blob = is_root ? std::string("{\"lora_r\": 8}") : std::string("stale");
  comm.broadcast_bytes(&blob, root);
  EXPECT_EQ(blob, "{\"lora_r\": 8}");
  comm.barrier();
}

TEST(DistWorker, Scalars) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int world = comm.size(), rank = comm.rank();
  EXPECT_EQ(comm.all_reduce(double(rank + 1), ScalarOp::Sum), double(rank_weight_sum(world)));
  EXPECT_EQ(comm.all_reduce(double(rank) * 1.5, ScalarOp::Max), double(world - 1) * 1.5);
  EXPECT_EQ(comm.all_reduce(double(rank) - 0.25, ScalarOp::Min), -0.25);
  const int64_t big = int64_t(1) << 40;  // beyond int32, as token counts can be
  EXPECT_EQ(comm.all_reduce(big + rank, ScalarOp::Sum), world * big + int64_t(world) * (world - 1) / 2);
  EXPECT_EQ(comm.all_reduce(int64_t(rank == 1 ? 1 : 0), ScalarOp::Max), 1);  // an overflow flag
  EXPECT_EQ(comm.all_reduce(int64_t(10 - rank), ScalarOp::Min), 10 - (world - 1));
}

TEST(DistWorker, AllGatherBytesOfDifferentLengths) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  std::string mine(size_t(comm.rank()) * 3, char('a' + comm.rank()));  // rank 0 sends nothing
  auto all = comm.all_gather_bytes(mine);
  ASSERT_EQ(int(all.size()), comm.size());
  for (int r = 0; r < comm.size(); ++r) EXPECT_EQ(all[r], std::string(size_t(r) * 3, char('a' + r)));
}

// ZeRO-2 moves gradients with reduce_scatter over the FlatPartition and parameters back with
// all_gather: together they must give every rank exactly what all_reduce would.
TEST(DistWorker, ReduceScatterThenAllGatherReconstructsAllReduce) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  FlatPartition flat(1001, comm.size());
  std::vector<float> grads(flat.padded_numel(), 0.f);  // padding stays zero
  for (int64_t i = 0; i < flat.numel(); ++i) grads[i] = float((comm.rank() + 1) * (i % 17) - 3 * comm.rank());

  std::vector<float> all_reduced = grads;
  comm.all_reduce_sum(all_reduced);
  std::vector<float> mine(flat.partition_size());
  comm.reduce_scatter_sum(grads, mine);
  std::vector<float> gathered(flat.padded_numel());
  comm.all_gather(mine, gathered);
  EXPECT_EQ(std::memcmp(gathered.data(), all_reduced.data(), gathered.size() * sizeof(float)), 0);

  // random values: the sums may round differently from all_reduce's, but all ranks agree bit for bit
  std::vector<float> noisy = random_floats(300 + comm.rank(), size_t(flat.padded_numel()));
  std::vector<float> reference = noisy;
  comm.all_reduce_sum(reference);
  comm.reduce_scatter_sum(noisy, mine);
  comm.all_gather(mine, gathered);
  EXPECT_TRUE(identical_on_all_ranks(comm, gathered));
  for (size_t i = 0; i < gathered.size(); ++i) ASSERT_NEAR(gathered[i], reference[i], 1e-5) << i;
}

// Bucketed ZeRO-2: each bucket of plan_gradient_buckets reduced with an uneven reduce_scatter lands
// in the owners' partitions, all buckets in flight at once.
TEST(DistWorker, BucketedUnevenReduceScatterFillsOwnPartition) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const std::vector<int64_t> params{300, 1, 517, 120, 63};
  FlatPartition flat(1001, comm.size());
  auto buckets = plan_gradient_buckets(params, flat.padded_numel(), 256);
  std::vector<float> grads(flat.padded_numel(), 0.f);
  std::vector<uint16_t> bf16_grads(flat.padded_numel(), 0);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    grads[i] = float((comm.rank() + 1) * (i % 19));
    bf16_grads[i] = f32_to_bf16(float((comm.rank() + 1) * (i % 5)));
  }
  std::vector<float> expected = grads;
  comm.all_reduce_sum(expected);

  Range own = flat.rank_range(comm.rank());
  std::vector<float> partition(flat.partition_size(), -1.f);
  std::vector<uint16_t> bf16_partition(flat.partition_size(), 0xFFFF);
  std::vector<Request> in_flight;
  std::vector<std::vector<int64_t>> counts;  // kept alive while the requests run
  for (const GradientBucket& bucket : buckets) {
    counts.push_back(flat.counts_per_rank(bucket.flat));
    const auto& c = counts.back();
    int64_t out_offset = std::max(bucket.flat.begin, own.begin) - own.begin;
    std::span<const float> in(grads.data() + bucket.flat.begin, size_t(bucket.flat.size()));
    std::span<float> out(partition.data() + (c[comm.rank()] ? out_offset : 0), size_t(c[comm.rank()]));
    in_flight.push_back(comm.reduce_scatter_sum_uneven_async(in, out, c));
    std::span<const uint16_t> bf16_in(bf16_grads.data() + bucket.flat.begin, size_t(bucket.flat.size()));
    std::span<uint16_t> bf16_out(bf16_partition.data() + (c[comm.rank()] ? out_offset : 0),
                                 size_t(c[comm.rank()]));
    in_flight.push_back(comm.reduce_scatter_sum_uneven_async(bf16_in, bf16_out, c));
  }
  for (auto& request : in_flight) request.wait();
  size_t wrong = 0;
  for (int64_t j = 0; j < flat.partition_size(); ++j) {
    int64_t i = own.begin + j;
    wrong += partition[j] != expected[i];
    float bf16_expected = i < flat.numel() ? float((i % 5) * rank_weight_sum(comm.size())) : 0.f;
    wrong += bf16_to_f32(bf16_partition[j]) != bf16_expected;
  }
  EXPECT_EQ(wrong, 0u);
}

TEST(DistWorker, SeveralNonBlockingCollectivesInFlight) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  const int world = comm.size(), rank = comm.rank();
  std::vector<float> a(5000, float(rank + 1));
  std::vector<float> b_in(300 * world, float(rank + 1)), b_out(300);
  std::vector<float> c_in(200, float(rank)), c_out(200 * world);
  {
    Request ra = comm.all_reduce_sum_async(a);
    Request rb = comm.reduce_scatter_sum_async(b_in, b_out);
    Request rc = comm.all_gather_async(c_in, c_out);
    rc.wait();  // any completion order is allowed
    rb.wait();
    // ra is left to its destructor, which must wait before `a` is read below
  }
  size_t wrong = 0;
  for (float x : a) wrong += x != float(rank_weight_sum(world));
  for (float x : b_out) wrong += x != float(rank_weight_sum(world));
  for (int r = 0; r < world; ++r)
    for (int j = 0; j < 200; ++j) wrong += c_out[r * 200 + j] != float(r);
  EXPECT_EQ(wrong, 0u);
}

// What CommStats measures for a ZeRO-2 step equals zero_step_volume's prediction.
TEST(DistWorker, MeasuredBytesMatchZeroFormulas) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  FlatPartition flat(1001, comm.size());
  std::vector<float> grads(flat.padded_numel(), 1.f), params(flat.padded_numel());
  std::vector<float> mine(flat.partition_size());
  ZeroStepShape shape;
  shape.world = comm.size();
  shape.gradient_accumulation_steps = 3;
  shape.trainable_elements = flat.padded_numel();

  comm.reset_stats();
  for (int micro = 0; micro < 3; ++micro) comm.reduce_scatter_sum(grads, mine);
  comm.all_gather(mine, params);
  shape.stage = 2;
  EXPECT_DOUBLE_EQ(comm.stats().ring_bytes_sent(), zero_step_volume(shape).total());
  EXPECT_EQ(comm.stats().reduce_scatter.calls, 3);

  comm.reset_stats();
  comm.all_reduce_sum(grads);
  shape.stage = 0;
  EXPECT_DOUBLE_EQ(comm.stats().ring_bytes_sent(), zero_step_volume(shape).total());
}

TEST(DistWorker, ConsistencyCheckNamesTheDifferingRank) {
  ZL_REQUIRE_MPI_WORKER();
  Comm& comm = worker_comm();
  EXPECT_NO_THROW(check_same_on_all_ranks(comm, "model", "llama-7b"));

  std::string path = comm.rank() == 1 ? "/data/b.json" : "/data/a.json";
  try {
    check_same_on_all_ranks(comm, "data_path", path);
    ADD_FAILURE() << "ranks disagree but no error";
  } catch (const zerolora::core::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("data_path: differs between ranks"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 1 has \"/data/b.json\""), std::string::npos) << m;
    std::string others = comm.size() == 2 ? "rank 0 has" : comm.size() == 3 ? "ranks 0,2 have" : "ranks 0,2,3 have";
    EXPECT_NE(m.find(others + " \"/data/a.json\""), std::string::npos) << m;
  }

  // A long value is shown around its first difference.
  std::string config(500, 'x');
  if (comm.rank() == comm.size() - 1) config.replace(300, 6, "rank=9");
  try {
    check_same_on_all_ranks(comm, "config", config);
    ADD_FAILURE() << "ranks disagree but no error";
  } catch (const zerolora::core::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("rank=9"), std::string::npos) << m;
    EXPECT_NE(m.find("(500 bytes)"), std::string::npos) << m;
  }
}

namespace {

void expect_workers_pass(int ranks) {
  auto run = zerolora::test::run_mpi_workers(ranks, "DistWorker.*", {"ZEROLORA_COLLECTIVE_TIMEOUT_S=30"}, 120);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(zerolora::test::count_passed_ranks(run.output), ranks) << run.output;
  EXPECT_EQ(run.output.find("SKIPPED ]"), std::string::npos) << "worker tests did not run:\n" << run.output;
  std::cout << "[ info ] " << ranks << " ranks: " << run.seconds << " s\n";
}

}  // namespace

TEST(DistMpi, WorkersOnTwoRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  expect_workers_pass(2);
}
TEST(DistMpi, WorkersOnThreeRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  expect_workers_pass(3);
}
TEST(DistMpi, WorkersOnFourRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  expect_workers_pass(4);
}
