// Communication between the ranks of a data-parallel job: the only place that knows how bytes move.
//
// `Comm` is the interface (MLX's distributed::Group plays the same role); `make_comm()` returns an
// MPI-backed one when the process was started by mpirun and a one-rank `SoloComm` otherwise, so one
// binary runs both ways. The trainer talks only to this header.
//
// Buffers are flat arrays of float, or of bf16 kept as raw uint16_t bits (the storage core uses for
// bf16; f16 is not supported here). A bf16 reduction adds each pair of values in fp32 and rounds the
// sum back to bf16, as NCCL does, so the wire carries 2 bytes per element; a caller that wants a single
// rounding for the whole sum reduces an fp32 copy instead.
//
// Determinism: the trainer needs every rank to end each step with bit-identical weights.
//  * all_reduce: OpenMPI's algorithms (recursive doubling, ring, Rabenseifner) combine the same operands
//    in a rank-independent way, so every rank receives the same bits (fp addition is commutative, and
//    each partial sum is computed once and forwarded, or computed identically on both partners).
//    The tests check this on random data. The order may differ from a sequential sum, so results can
//    differ in the last bits from a one-process run; they never differ between ranks.
//  * reduce_scatter + all_gather: each element is summed once, by its owner, then copied, so all ranks
//    hold identical bits by construction.
//
// Non-blocking calls return a `Request`; the buffers must stay alive and untouched until wait(), and
// input and output buffers must not overlap. Every rank must issue the same collectives in the same
// order (MPI's rule). A Comm (and its Requests) is used from the thread that created it only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace zerolora::dist {

enum class ScalarOp { Sum, Max, Min };

struct CommOptions {
  // Seconds a rank may wait inside one collective before it reports which ranks did not arrive and
  // aborts the whole job (a dead or stuck rank must not hang the others forever). 0 = wait forever
  // (useful under a debugger). Generous by default: a rank may legitimately be busy loading a model
  // or running an evaluation while the others already wait in the next collective.
  double collective_timeout_s = 300;

  // Defaults, overridden by ZEROLORA_COLLECTIVE_TIMEOUT_S (seconds, >= 0). Throws core::Error on a
  // malformed value.
  static CommOptions from_env();
};

// One in-flight non-blocking collective. Move-only. Waiting twice is fine; destroying a request that
// is still in flight waits for it, because its buffers may not be freed while MPI still writes them.
class RequestImpl {
 public:
  virtual ~RequestImpl() = default;
  virtual bool test() = 0;  // true once complete; drives progress
  virtual void wait() = 0;  // blocks (under the collective watchdog) until complete
};

class Request {
 public:
  Request() = default;  // an already-complete request
  explicit Request(std::unique_ptr<RequestImpl> impl) : impl_(std::move(impl)) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&& other) noexcept;
  ~Request();

  void wait();
  bool test();

 private:
  std::unique_ptr<RequestImpl> impl_;
};

// What one rank handed to collectives since the last reset. `ring_bytes_sent` is what a
// bandwidth-optimal (ring) algorithm sends from this rank for those calls: the unit of the ZeRO
// communication-volume formulas in zero_cost.h, so measured and predicted volumes can be compared.
// Scalars, blobs and barriers are not counted (a few bytes per step).
struct CollectiveCounter {
  int64_t calls = 0;
  int64_t payload_bytes = 0;  // all_reduce: the buffer; reduce_scatter: the input; all_gather: the output
  double ring_bytes_sent = 0;
};
struct CommStats {
  CollectiveCounter all_reduce, reduce_scatter, all_gather, broadcast;
  double ring_bytes_sent() const;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi" or "solo"

  // Sum across ranks, in place; every rank ends with the same bits.
  void all_reduce_sum(std::span<float> data) { all_reduce_sum_async(data).wait(); }
  void all_reduce_sum(std::span<uint16_t> bf16_data) { all_reduce_sum_async(bf16_data).wait(); }
  Request all_reduce_sum_async(std::span<float> data);
  Request all_reduce_sum_async(std::span<uint16_t> bf16_data);

  // input holds size() equal chunks; rank r receives the sum over ranks of chunk r in output.
  void reduce_scatter_sum(std::span<const float> input, std::span<float> output) {
    reduce_scatter_sum_async(input, output).wait();
  }
  void reduce_scatter_sum(std::span<const uint16_t> bf16_input, std::span<uint16_t> bf16_output) {
    reduce_scatter_sum_async(bf16_input, bf16_output).wait();
  }
  Request reduce_scatter_sum_async(std::span<const float> input, std::span<float> output);
  Request reduce_scatter_sum_async(std::span<const uint16_t> bf16_input, std::span<uint16_t> bf16_output);

  // As reduce_scatter_sum, with chunk r of counts[r] elements (chunks laid out in rank order). This is
  // what a gradient bucket needs: a bucket range cut by FlatPartition::counts_per_rank.
  void reduce_scatter_sum_uneven(std::span<const float> input, std::span<float> output,
                                 std::span<const int64_t> counts) {
    reduce_scatter_sum_uneven_async(input, output, counts).wait();
  }
  Request reduce_scatter_sum_uneven_async(std::span<const float> input, std::span<float> output,
                                          std::span<const int64_t> counts);
  Request reduce_scatter_sum_uneven_async(std::span<const uint16_t> bf16_input,
                                          std::span<uint16_t> bf16_output,
                                          std::span<const int64_t> counts);

  // output = the inputs of ranks 0..size()-1 concatenated (input.size() * size() elements).
  void all_gather(std::span<const float> input, std::span<float> output) {
    all_gather_async(input, output).wait();
  }
  void all_gather(std::span<const uint16_t> bf16_input, std::span<uint16_t> bf16_output) {
    all_gather_async(bf16_input, bf16_output).wait();
  }
  Request all_gather_async(std::span<const float> input, std::span<float> output);
  Request all_gather_async(std::span<const uint16_t> bf16_input, std::span<uint16_t> bf16_output);
  // Raw bytes (ZeRO-3's frozen weights in whatever storage they have: bf16, f32, NF4 codes).
  Request all_gather_async(std::span<const uint8_t> input, std::span<uint8_t> output);

  // Every rank receives root's data.
  void broadcast(std::span<float> data, int root);
  void broadcast(std::span<uint16_t> bf16_data, int root);

  void barrier();

  // Scalars for overflow flags, token counts, squared norms. Same result on every rank.
  double all_reduce(double value, ScalarOp op);
  int64_t all_reduce(int64_t value, ScalarOp op);

  // Small byte blobs of any length per rank (config fingerprints, hostnames): result[r] = rank r's.
  std::vector<std::string> all_gather_bytes(const std::string& blob);
  // Root's blob replaces *blob on every rank.
  void broadcast_bytes(std::string* blob, int root);

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats{}; }

 protected:
  // The backend's primitives. Arguments are validated and stats counted before these are called.
  // dtype is F32 or BF16 (U8 for all_gather). counts has size() entries; input holds sum(counts) elements.
  virtual Request start_all_reduce_sum(void* data, size_t count, core::DType dtype) = 0;
  virtual Request start_reduce_scatter_sum(const void* input, void* output,
                                           std::span<const int64_t> counts, core::DType dtype) = 0;
  virtual Request start_all_gather(const void* input, void* output, size_t count_per_rank,
                                   core::DType dtype) = 0;
  virtual void do_broadcast(void* data, size_t bytes, int root) = 0;
  virtual void do_barrier() = 0;
  virtual double do_all_reduce(double value, ScalarOp op) = 0;
  virtual int64_t do_all_reduce(int64_t value, ScalarOp op) = 0;
  virtual std::vector<std::string> do_all_gather_bytes(const std::string& blob) = 0;

 private:
  Request all_reduce_checked(void* data, size_t count, core::DType dtype);
  Request reduce_scatter_checked(const char* where, const void* input, size_t input_count, void* output,
                                 size_t output_count, std::span<const int64_t> counts,
                                 core::DType dtype);
  Request all_gather_checked(const void* input, size_t input_count, void* output, size_t output_count,
                             core::DType dtype);
  void broadcast_checked(void* data, size_t count, core::DType dtype, int root);

  CommStats stats_;
};

// MpiComm when launched by an MPI launcher (mpirun sets OMPI_COMM_WORLD_SIZE; srun with PMIx sets
// PMIX_RANK), otherwise SoloComm. MPI is initialised by the first MpiComm and finalised by the last
// one destroyed; it cannot be initialised again after that.
std::unique_ptr<Comm> make_comm(const CommOptions& options = CommOptions::from_env());

// True when this process was started by an MPI launcher (the test make_comm() uses).
bool launched_by_mpi();

}  // namespace zerolora::dist
