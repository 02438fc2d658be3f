#include "dist/comm.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "dist/mpi_comm.h"
#include "dist/solo_comm.h"
#include "dist/zero_cost.h"

namespace zerolora::dist {

using core::DType;

CommOptions CommOptions::from_env() {
  CommOptions options;
  const char* text = std::getenv("ZEROLORA_COLLECTIVE_TIMEOUT_S");
  if (text && *text) {
    char* end = nullptr;
    errno = 0;
    double seconds = std::strtod(text, &end);
    bool valid = errno == 0 && end && *end == '\0' && std::isfinite(seconds) && seconds >= 0;
    core::check(valid, "ZEROLORA_COLLECTIVE_TIMEOUT_S",
                std::string("'").append(text).append("' is not a number of seconds >= 0"),
                "set it to e.g. 300, or 0 to wait forever");
    options.collective_timeout_s = seconds;
  }
  return options;
}

Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    if (impl_) impl_->wait();  // the old collective's buffers are still in use
    impl_ = std::move(other.impl_);
  }
  return *this;
}

Request::~Request() {
  if (impl_) impl_->wait();
}

void Request::wait() {
  if (impl_) {
    impl_->wait();
    impl_.reset();
  }
}

bool Request::test() {
  if (impl_ && impl_->test()) impl_.reset();
  return !impl_;
}

double CommStats::ring_bytes_sent() const {
  return all_reduce.ring_bytes_sent + reduce_scatter.ring_bytes_sent + all_gather.ring_bytes_sent +
         broadcast.ring_bytes_sent;
}

namespace {

void count(CollectiveCounter* counter, int64_t payload_bytes, double ring_bytes) {
  counter->calls += 1;
  counter->payload_bytes += payload_bytes;
  counter->ring_bytes_sent += ring_bytes;
}

void check_root(const char* where, int root, int size) {
  core::check(root >= 0 && root < size, where,
              "root rank " + std::to_string(root) + " is outside 0.." + std::to_string(size - 1));
}

}  // namespace

Request Comm::all_reduce_checked(void* data, size_t count_elements, DType dtype) {
  int64_t bytes = int64_t(count_elements * core::dtype_size(dtype));
  count(&stats_.all_reduce, bytes, ring_bytes_sent(Collective::AllReduce, bytes, size()));
  return start_all_reduce_sum(data, count_elements, dtype);
}

Request Comm::all_reduce_sum_async(std::span<float> data) {
  return all_reduce_checked(data.data(), data.size(), DType::F32);
}
Request Comm::all_reduce_sum_async(std::span<uint16_t> bf16_data) {
  return all_reduce_checked(bf16_data.data(), bf16_data.size(), DType::BF16);
}

Request Comm::reduce_scatter_checked(const char* where, const void* input, size_t input_count,
                                     void* output, size_t output_count,
                                     std::span<const int64_t> counts, DType dtype) {
  core::check(counts.size() == size_t(size()), where,
              "got " + std::to_string(counts.size()) + " chunk counts for " + std::to_string(size()) +
                  " ranks");
  int64_t total = 0;
  for (int64_t c : counts) {
    core::check(c >= 0, where, "negative chunk count " + std::to_string(c));
    total += c;
  }
  core::check(size_t(total) == input_count, where,
              "input has " + std::to_string(input_count) + " elements but the chunks add up to " +
                  std::to_string(total));
  core::check(size_t(counts[rank()]) == output_count, where,
              "output has " + std::to_string(output_count) + " elements but this rank's chunk has " +
                  std::to_string(counts[rank()]));
  int64_t bytes = int64_t(input_count * core::dtype_size(dtype));
  count(&stats_.reduce_scatter, bytes, ring_bytes_sent(Collective::ReduceScatter, bytes, size()));
  return start_reduce_scatter_sum(input, output, counts, dtype);
}

Request Comm::reduce_scatter_sum_async(std::span<const float> input, std::span<float> output) {
  std::vector<int64_t> counts(size(), int64_t(output.size()));
  return reduce_scatter_checked("dist::Comm::reduce_scatter_sum", input.data(), input.size(),
                                output.data(), output.size(), counts, DType::F32);
}
Request Comm::reduce_scatter_sum_async(std::span<const uint16_t> bf16_input,
                                       std::span<uint16_t> bf16_output) {
  std::vector<int64_t> counts(size(), int64_t(bf16_output.size()));
  return reduce_scatter_checked("dist::Comm::reduce_scatter_sum", bf16_input.data(), bf16_input.size(),
                                bf16_output.data(), bf16_output.size(), counts, DType::BF16);
}
Request Comm::reduce_scatter_sum_uneven_async(std::span<const float> input, std::span<float> output,
                                              std::span<const int64_t> counts) {
  return reduce_scatter_checked("dist::Comm::reduce_scatter_sum_uneven", input.data(), input.size(),
                                output.data(), output.size(), counts, DType::F32);
}
Request Comm::reduce_scatter_sum_uneven_async(std::span<const uint16_t> bf16_input,
                                              std::span<uint16_t> bf16_output,
                                              std::span<const int64_t> counts) {
  return reduce_scatter_checked("dist::Comm::reduce_scatter_sum_uneven", bf16_input.data(),
                                bf16_input.size(), bf16_output.data(), bf16_output.size(), counts,
                                DType::BF16);
}

Request Comm::all_gather_checked(const void* input, size_t input_count, void* output,
                                 size_t output_count, DType dtype) {
  core::check(output_count == input_count * size_t(size()), "dist::Comm::all_gather",
              "output has " + std::to_string(output_count) + " elements, expected " +
                  std::to_string(input_count) + " x " + std::to_string(size()) + " ranks");
  int64_t bytes = int64_t(output_count * core::dtype_size(dtype));
  count(&stats_.all_gather, bytes, ring_bytes_sent(Collective::AllGather, bytes, size()));
  return start_all_gather(input, output, input_count, dtype);
}

Request Comm::all_gather_async(std::span<const float> input, std::span<float> output) {
  return all_gather_checked(input.data(), input.size(), output.data(), output.size(), DType::F32);
}
Request Comm::all_gather_async(std::span<const uint16_t> bf16_input, std::span<uint16_t> bf16_output) {
  return all_gather_checked(bf16_input.data(), bf16_input.size(), bf16_output.data(),
                            bf16_output.size(), DType::BF16);
}
Request Comm::all_gather_async(std::span<const uint8_t> input, std::span<uint8_t> output) {
  return all_gather_checked(input.data(), input.size(), output.data(), output.size(), DType::U8);
}

void Comm::broadcast_checked(void* data, size_t count_elements, DType dtype, int root) {
  check_root("dist::Comm::broadcast", root, size());
  int64_t bytes = int64_t(count_elements * core::dtype_size(dtype));
  count(&stats_.broadcast, bytes, ring_bytes_sent(Collective::Broadcast, bytes, size()));
  do_broadcast(data, size_t(bytes), root);
}

void Comm::broadcast(std::span<float> data, int root) {
  broadcast_checked(data.data(), data.size(), DType::F32, root);
}
void Comm::broadcast(std::span<uint16_t> bf16_data, int root) {
  broadcast_checked(bf16_data.data(), bf16_data.size(), DType::BF16, root);
}

void Comm::barrier() { do_barrier(); }

double Comm::all_reduce(double value, ScalarOp op) { return do_all_reduce(value, op); }
int64_t Comm::all_reduce(int64_t value, ScalarOp op) { return do_all_reduce(value, op); }

std::vector<std::string> Comm::all_gather_bytes(const std::string& blob) {
  return do_all_gather_bytes(blob);
}

void Comm::broadcast_bytes(std::string* blob, int root) {
  check_root("dist::Comm::broadcast_bytes", root, size());
  // Two steps because only root knows the length.
  int64_t length = rank() == root ? int64_t(blob->size()) : 0;
  do_broadcast(&length, sizeof(length), root);
  if (rank() != root) blob->assign(size_t(length), '\0');
  do_broadcast(blob->data(), size_t(length), root);
}

bool launched_by_mpi() {
  // mpirun (OpenMPI) sets OMPI_COMM_WORLD_SIZE; srun --mpi=pmix sets PMIX_RANK.
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

std::unique_ptr<Comm> make_comm(const CommOptions& options) {
  if (launched_by_mpi()) return make_mpi_comm(options);
  return std::make_unique<SoloComm>();
}

}  // namespace zerolora::dist
