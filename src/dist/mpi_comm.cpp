#include "dist/mpi_comm.h"

// Only the C API: the target links MPI::MPI_C, and OpenMPI's mpi.h would otherwise pull in its
// deprecated C++ bindings when compiled as C++.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <list>
#include <thread>

#include "core/error.h"
#include "core/runtime.h"
#include "dist/consistency.h"
#include "dist/watchdog_report.h"

namespace zerolora::dist {

using core::DType;

namespace {

// bf16 sum for MPI: each combine adds in fp32 and rounds once to bf16 (NCCL's behaviour).
void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = core::f32_to_bf16(core::bf16_to_f32(a[i]) + core::bf16_to_f32(b[i]));
}

// MPI is initialised once per process and shared by every MpiComm; the last one out finalises it.
struct MpiProcess {
  int users = 0;
  bool we_initialised = false;
  MPI_Op bf16_sum = MPI_OP_NULL;
};
MpiProcess& mpi_process() {
  static MpiProcess process;
  return process;
}

void acquire_mpi() {
  MpiProcess& p = mpi_process();
  if (p.users == 0) {
    int finalised = 0, initialised = 0, provided = 0;
    MPI_Finalized(&finalised);
    core::check(!finalised, "dist::make_comm", "MPI was already finalised in this process",
                "create one Comm at start-up and keep it for the whole run");
    MPI_Initialized(&initialised);
    if (!initialised) {
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      p.we_initialised = true;
    } else {
      MPI_Query_thread(&provided);
    }
    core::check(provided >= MPI_THREAD_FUNNELED, "dist::make_comm",
                "the MPI library gives thread level " + std::to_string(provided) +
                    ", below MPI_THREAD_FUNNELED",
                "use an MPI built with thread support (Debian's OpenMPI has it)");
    MPI_Op_create(sum_bf16, /*commute=*/1, &p.bf16_sum);
  }
  p.users += 1;
}

void release_mpi() {
  MpiProcess& p = mpi_process();
  if (--p.users > 0) return;
  MPI_Op_free(&p.bf16_sum);
  if (p.we_initialised) MPI_Finalize();
}

MPI_Datatype mpi_type(DType dtype) {
  return dtype == DType::BF16 ? MPI_UINT16_T : dtype == DType::U8 ? MPI_BYTE : MPI_FLOAT;
}
MPI_Op sum_op(DType dtype) { return dtype == DType::BF16 ? mpi_process().bf16_sum : MPI_SUM; }
MPI_Op scalar_op(ScalarOp op) {
  switch (op) {
    case ScalarOp::Sum: return MPI_SUM;
    case ScalarOp::Max: return MPI_MAX;
    case ScalarOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

int mpi_count(size_t count, const char* name) {
  core::check(count <= size_t(INT_MAX), std::string("dist::Comm::") + name,
              std::to_string(count) + " elements exceed MPI's int count limit",
              "move the buffer in buckets of at most 2^31-1 elements");
  return int(count);
}

// Waiting strategy. Non-blocking collectives only progress inside MPI calls, so a sleeping rank stalls
// every rank behind it: keep calling MPI_Test like a blocking MPI_Wait does, yielding the core between
// calls after the first millisecond (as OpenMPI does when ranks share cores). Only a wait already
// seconds long (a rank far behind: loading a model, evaluating) sleeps between tests, so idle ranks stop
// burning a core that the busy one may need; by then 200 us per test is noise.
void pause_while_waiting(double waited_s) {
  if (waited_s < 1e-3) return;
  if (waited_s < 2.0) {
    sched_yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(200));
}

constexpr int kStatusQueryTag = 1;
constexpr int kStatusReplyTag = 2;
// A status reply: {collectives issued, seq waited on (-1 none), name waited on, name of the asked seq}.
using StatusReply = std::array<int64_t, 4>;
constexpr int kRecentNames = 256;

}  // namespace

class MpiComm;

class MpiRequest final : public RequestImpl {
 public:
  MpiRequest(MpiComm* comm, CollectiveName name, int64_t seq) : comm_(comm), name_(name), seq_(seq) {}
  bool test() override;
  void wait() override;

  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<int> counts, displacements;  // must outlive the call (reduce_scatter, all_gatherv)
  std::vector<int64_t> lengths;            // all_gather_bytes's first step receives into this

 private:
  MpiComm* comm_;
  CollectiveName name_;
  int64_t seq_;
};

class MpiComm final : public Comm {
 public:
  explicit MpiComm(const CommOptions& options) : timeout_s_(options.collective_timeout_s) {
    acquire_mpi();
    // Private communicators: ours cannot match messages of a library sharing MPI_COMM_WORLD, and the
    // watchdog's status messages cannot match collective traffic.
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_dup(MPI_COMM_WORLD, &control_);
    // Errors come back as codes so we can say which rank and collective failed before aborting.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    recent_names_.fill(-1);
    gather_host_names();
  }

  ~MpiComm() override {
    // Leaving because of an exception: skip MPI_Finalize. In OpenMPI it waits for every rank, and the
    // others may be inside a collective waiting for this one, so finalising would hang the job; exiting
    // without it makes mpirun stop every rank at once and name this one.
    if (std::uncaught_exceptions() > 0) return;
    for (auto& reply : replies_)
      if (reply.request != MPI_REQUEST_NULL) MPI_Request_free(&reply.request);
    MPI_Comm_free(&control_);
    MPI_Comm_free(&comm_);
    release_mpi();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  // Polls `request` to completion under the watchdog.
  void wait_for(MPI_Request* request, CollectiveName name, int64_t seq);
  bool test_once(MPI_Request* request, CollectiveName name);
  void check_mpi(int code, CollectiveName name);

 protected:
  Request start_all_reduce_sum(void* data, size_t count, DType dtype) override {
    int n = mpi_count(count, "all_reduce_sum");  // may throw: before a sequence number is taken
    auto req = begin(CollectiveName::AllReduceSum);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, n, mpi_type(dtype), sum_op(dtype), comm_, &req->request),
              CollectiveName::AllReduceSum);
    return Request(std::move(req));
  }

  Request start_reduce_scatter_sum(const void* input, void* output, std::span<const int64_t> counts,
                                   DType dtype) override {
    std::vector<int> int_counts;
    for (int64_t c : counts) int_counts.push_back(mpi_count(size_t(c), "reduce_scatter_sum"));
    auto req = begin(CollectiveName::ReduceScatterSum);
    req->counts = std::move(int_counts);
    bool equal = std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
    // The block form lets OpenMPI pick its best algorithm; the general one serves uneven buckets.
    int code = equal ? MPI_Ireduce_scatter_block(input, output, req->counts[0], mpi_type(dtype),
                                                 sum_op(dtype), comm_, &req->request)
                     : MPI_Ireduce_scatter(input, output, req->counts.data(), mpi_type(dtype),
                                           sum_op(dtype), comm_, &req->request);
    check_mpi(code, CollectiveName::ReduceScatterSum);
    return Request(std::move(req));
  }

  Request start_all_gather(const void* input, void* output, size_t count_per_rank,
                           DType dtype) override {
    mpi_count(count_per_rank * size_t(size_), "all_gather");  // the output's offsets are ints too
    int n = int(count_per_rank);
    auto req = begin(CollectiveName::AllGather);
    check_mpi(MPI_Iallgather(input, n, mpi_type(dtype), output, n, mpi_type(dtype), comm_, &req->request),
              CollectiveName::AllGather);
    return Request(std::move(req));
  }

  void do_broadcast(void* data, size_t bytes, int root) override {
    // In pieces of 1 GiB: MPI counts are ints.
    constexpr size_t kPiece = size_t(1) << 30;
    auto* bytes_ptr = static_cast<char*>(data);
    size_t done = 0;
    do {
      size_t n = std::min(kPiece, bytes - done);
      auto req = begin(CollectiveName::Broadcast);
      check_mpi(MPI_Ibcast(bytes_ptr + done, int(n), MPI_BYTE, root, comm_, &req->request),
                CollectiveName::Broadcast);
      req->wait();
      done += n;
    } while (done < bytes);
  }

  void do_barrier() override {
    auto req = begin(CollectiveName::Barrier);
    check_mpi(MPI_Ibarrier(comm_, &req->request), CollectiveName::Barrier);
    req->wait();
  }

  double do_all_reduce(double value, ScalarOp op) override {
    auto req = begin(CollectiveName::AllReduceScalar);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, scalar_op(op), comm_, &req->request),
              CollectiveName::AllReduceScalar);
    req->wait();
    return value;
  }

  int64_t do_all_reduce(int64_t value, ScalarOp op) override {
    auto req = begin(CollectiveName::AllReduceScalar);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, &value, 1, MPI_INT64_T, scalar_op(op), comm_, &req->request),
              CollectiveName::AllReduceScalar);
    req->wait();
    return value;
  }

  std::vector<std::string> do_all_gather_bytes(const std::string& blob) override {
    // Lengths first, then the bytes at their offsets.
    auto sizes = begin(CollectiveName::AllGatherBytes);
    int64_t length = int64_t(blob.size());
    sizes->lengths.resize(size_);
    check_mpi(MPI_Iallgather(&length, 1, MPI_INT64_T, sizes->lengths.data(), 1, MPI_INT64_T, comm_,
                             &sizes->request),
              CollectiveName::AllGatherBytes);
    sizes->wait();

    auto data = begin(CollectiveName::AllGatherBytes);
    size_t total = 0;
    for (int r = 0; r < size_; ++r) {
      data->counts.push_back(mpi_count(size_t(sizes->lengths[r]), "all_gather_bytes"));
      data->displacements.push_back(mpi_count(total, "all_gather_bytes"));
      total += size_t(sizes->lengths[r]);
    }
    mpi_count(total, "all_gather_bytes");
    std::string gathered(total, '\0');
    check_mpi(MPI_Iallgatherv(blob.data(), int(length), MPI_BYTE, gathered.data(), data->counts.data(),
                              data->displacements.data(), MPI_BYTE, comm_, &data->request),
              CollectiveName::AllGatherBytes);
    data->wait();

    std::vector<std::string> result(size_);
    for (int r = 0; r < size_; ++r)
      result[r] = gathered.substr(size_t(data->displacements[r]), size_t(data->counts[r]));
    return result;
  }

 private:
  struct PendingReply {
    StatusReply payload{};
    MPI_Request request = MPI_REQUEST_NULL;
  };

  std::unique_ptr<MpiRequest> begin(CollectiveName name) {
    recent_names_[issued_ % kRecentNames] = int64_t(name);
    return std::make_unique<MpiRequest>(this, name, issued_++);
  }

  int64_t name_of_seq(int64_t seq) const {
    if (seq < 0 || seq >= issued_ || seq < issued_ - kRecentNames) return -1;
    return recent_names_[seq % kRecentNames];
  }

  // Every rank's host name, once at start-up (on the control communicator, so no collective sequence
  // number is taken): when a rank stops answering later, the watchdog can say which node it was on.
  void gather_host_names() {
    constexpr int kLength = 256;  // Linux host names are at most 64 bytes; longer ones are cut
    std::string mine = host_name().substr(0, kLength - 1);
    mine.resize(kLength, '\0');
    std::string all(size_t(kLength) * size_t(size_), '\0');
    if (MPI_Allgather(mine.data(), kLength, MPI_CHAR, all.data(), kLength, MPI_CHAR, control_) != MPI_SUCCESS)
      return;  // the names only decorate messages; the next collective reports a real failure
    hosts_.resize(size_t(size_));
    for (int r = 0; r < size_; ++r) hosts_[size_t(r)] = all.c_str() + size_t(r) * kLength;
  }

  void answer_status_queries();
  [[noreturn]] void report_timeout_and_abort(CollectiveName name, int64_t seq, double waited_s);

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm control_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  double timeout_s_;
  int64_t issued_ = 0;  // collectives issued on comm_ so far; the next one gets this sequence number
  std::array<int64_t, kRecentNames> recent_names_;
  int64_t waiting_seq_ = -1;  // what this rank is blocked in, for status replies
  int64_t waiting_name_ = -1;
  std::vector<std::string> hosts_;    // hosts_[r]: rank r's host name (empty when the gather failed)
  std::list<PendingReply> replies_;  // a list: MPI_Isend keeps each payload's address until done
};

bool MpiRequest::test() { return comm_->test_once(&request, name_); }
void MpiRequest::wait() { comm_->wait_for(&request, name_, seq_); }

void MpiComm::check_mpi(int code, CollectiveName name) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  std::fprintf(stderr, "rank %d: MPI error in collective %s: %.*s; (fix: look for a rank that died "
               "or a network failure in the output above)\n", rank_,
               collective_name_text(int64_t(name)), length, text);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

bool MpiComm::test_once(MPI_Request* request, CollectiveName name) {
  int done = 0;
  check_mpi(MPI_Test(request, &done, MPI_STATUS_IGNORE), name);
  return done != 0;
}

void MpiComm::wait_for(MPI_Request* request, CollectiveName name, int64_t seq) {
  if (*request == MPI_REQUEST_NULL) return;
  if (timeout_s_ <= 0) {
    check_mpi(MPI_Wait(request, MPI_STATUS_IGNORE), name);
    return;
  }
  waiting_seq_ = seq;
  waiting_name_ = int64_t(name);
  core::Timer timer;
  while (!test_once(request, name)) {
    double waited = timer.seconds();
    // Queries only come from a rank whose own wait timed out (>= the timeout), so there is no need to
    // look for them during the short waits that make up almost all collectives.
    if (waited > 0.05) answer_status_queries();
    if (waited > timeout_s_) report_timeout_and_abort(name, seq, waited);
    pause_while_waiting(waited);
  }
  waiting_seq_ = -1;
  waiting_name_ = -1;
}

void MpiComm::answer_status_queries() {
  for (;;) {
    int pending = 0;
    MPI_Status status;
    MPI_Iprobe(MPI_ANY_SOURCE, kStatusQueryTag, control_, &pending, &status);
    if (!pending) break;
    int64_t asked_seq = -1;
    MPI_Recv(&asked_seq, 1, MPI_INT64_T, status.MPI_SOURCE, kStatusQueryTag, control_,
             MPI_STATUS_IGNORE);
    PendingReply& reply = replies_.emplace_back();
    reply.payload = {issued_, waiting_seq_, waiting_name_, name_of_seq(asked_seq)};
    MPI_Isend(reply.payload.data(), 4, MPI_INT64_T, status.MPI_SOURCE, kStatusReplyTag, control_,
              &reply.request);
  }
  std::erase_if(replies_, [](PendingReply& reply) {
    int done = 0;
    MPI_Test(&reply.request, &done, MPI_STATUS_IGNORE);
    return done != 0;
  });
}

void MpiComm::report_timeout_and_abort(CollectiveName name, int64_t seq, double waited_s) {
  // Ask every other rank where it is. Ranks that are themselves waiting in a collective answer from
  // their polling loop; a rank busy outside MPI (computing, stuck, dead) cannot answer.
  std::vector<StatusReply> answers(size_);
  std::vector<MPI_Request> receives(size_, MPI_REQUEST_NULL), sends(size_, MPI_REQUEST_NULL);
  std::vector<bool> answered(size_, false);
  int64_t asked_seq = seq;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    MPI_Irecv(answers[r].data(), 4, MPI_INT64_T, r, kStatusReplyTag, control_, &receives[r]);
    MPI_Isend(&asked_seq, 1, MPI_INT64_T, r, kStatusQueryTag, control_, &sends[r]);
  }
  const double grace_s = std::clamp(timeout_s_ * 0.5, 0.5, 2.0);
  core::Timer grace;
  int missing = size_ - 1;
  while (missing > 0 && grace.seconds() < grace_s) {
    for (int r = 0; r < size_; ++r) {
      int done = 0;
      if (r == rank_ || answered[r]) continue;
      MPI_Test(&receives[r], &done, MPI_STATUS_IGNORE);
      if (done) answered[r] = true, --missing;
    }
    answer_status_queries();  // others may be asking us the same thing at the same time
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  std::vector<RankStatus> others(size_);
  for (int r = 0; r < size_; ++r) {
    const auto [issued, waiting_seq, waiting_name, name_at_seq] = answers[r];
    if (answered[r]) others[r] = {true, issued, waiting_seq, waiting_name, name_at_seq};
  }
  std::string message = collective_timeout_message(rank_, name, seq, waited_s, timeout_s_, others, hosts_);
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

std::unique_ptr<Comm> make_mpi_comm(const CommOptions& options) {
  return std::make_unique<MpiComm>(options);
}

}  // namespace zerolora::dist
