#include "dist/solo_comm.h"

#include <cstring>

namespace zerolora::dist {

Request SoloComm::start_all_reduce_sum(void*, size_t, core::DType) { return Request(); }

Request SoloComm::start_reduce_scatter_sum(const void* input, void* output,
                                           std::span<const int64_t> counts, core::DType dtype) {
  // memmove: in-place use (output aliasing input) is harmless with one rank.
  if (counts[0] > 0) std::memmove(output, input, size_t(counts[0]) * core::dtype_size(dtype));
  return Request();
}

Request SoloComm::start_all_gather(const void* input, void* output, size_t count_per_rank,
                                   core::DType dtype) {
  if (count_per_rank > 0) std::memmove(output, input, count_per_rank * core::dtype_size(dtype));
  return Request();
}

void SoloComm::do_broadcast(void*, size_t, int) {}
void SoloComm::do_barrier() {}
double SoloComm::do_all_reduce(double value, ScalarOp) { return value; }
int64_t SoloComm::do_all_reduce(int64_t value, ScalarOp) { return value; }
std::vector<std::string> SoloComm::do_all_gather_bytes(const std::string& blob) { return {blob}; }

}  // namespace zerolora::dist
