// Where a step's wall time goes, by kind of operation: a scoped timer around each model op (off unless
// enabled, then one steady_clock read at each end). Ops that run asynchronously (a GPU stream) register a
// sync with set_op_timer_sync: a profiled timer then waits for the device at both ends, so each op's time is
// its own (the waits serialise host and device: profile runs are slower than plain ones). Used by `bench_train_step --profile` and by
// `zerolora train` with ZEROLORA_PROFILE=1, for the breakdown in docs/PERFORMANCE.md. Timers run on the
// calling thread only (the kernels parallelise inside an op), so the shares add up to the step's time.
#pragma once
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace zerolora::core {

enum class Op : int {
  FrozenGemm,          // x W^T through a frozen weight (incl. lm_head, NF4 dequantisation)
  FrozenGemmBackward,  // dx += dy W
  Lora,                // the LoRA branch, forward and backward (A, B GEMMs, their gradients, dropout)
  Attention,           // flash attention forward
  AttentionBackward,
  Norm,                // RMSNorm forward and backward
  Rope,                // rotary embedding forward and backward
  Swiglu,              // SwiGLU forward and backward
  CrossEntropy,        // softmax cross-entropy and its gradient on the logits
  Elementwise,         // embedding lookup, residual adds, buffer clears
  Communication,       // waiting on collectives (ZeRO-3 gathers, gradient reduction)
  Optimizer,           // clipping and AdamW
  Count
};
const char* op_name(Op op);

void set_op_profiling(bool on);
bool op_profiling();
void reset_op_profile();
// Seconds per op since the last reset, in Op order.
std::vector<std::pair<std::string, double>> op_profile_seconds();
// "FrozenGemm 61.2 % (3.52 s), ..." sorted by time, ops under 0.05 % left out.
std::string op_profile_summary();

void add_op_seconds(Op op, double seconds);
// A wait for asynchronous work (null: none, the default), called by profiled timers.
void set_op_timer_sync(std::function<void()> sync);
void op_timer_sync();

class OpTimer {
 public:
  explicit OpTimer(Op op) : op_(op), on_(op_profiling()) {
    if (on_) {
      op_timer_sync();
      start_ = std::chrono::steady_clock::now();
    }
  }
  ~OpTimer() {
    if (on_) {
      op_timer_sync();
      add_op_seconds(op_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
    }
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  Op op_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace zerolora::core
