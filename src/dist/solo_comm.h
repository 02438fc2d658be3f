// The one-rank Comm: a process started without mpirun. Reductions of one rank are the identity, so
// collectives copy (reduce_scatter, all_gather) or do nothing (all_reduce, broadcast, barrier), and the
// trainer runs the same code path as with N ranks.
#pragma once
#include "dist/comm.h"

namespace zerolora::dist {

class SoloComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "solo"; }

 protected:
  Request start_all_reduce_sum(void* data, size_t count, core::DType dtype) override;
  Request start_reduce_scatter_sum(const void* input, void* output, std::span<const int64_t> counts,
                                   core::DType dtype) override;
  Request start_all_gather(const void* input, void* output, size_t count_per_rank,
                           core::DType dtype) override;
  void do_broadcast(void* data, size_t bytes, int root) override;
  void do_barrier() override;
  double do_all_reduce(double value, ScalarOp op) override;
  int64_t do_all_reduce(int64_t value, ScalarOp op) override;
  std::vector<std::string> do_all_gather_bytes(const std::string& blob) override;
};

}  // namespace zerolora::dist
