// Internal to kernels/cuda: the state a CudaContext owns, error checks and launch helpers.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "core/error.h"
#include "kernels/context.h"

namespace zerolora::kernels {

// Reused device buffers of one context, by purpose, grown on first use (the step loop then allocates
// nothing; growing waits for the stream so the old buffer is no longer in use).
enum class Scratch : int {
  GemmInput,
  Weight,
  Attention,
  AttentionBf16,    // kernels/cuda/attention.cu: bf16 copies of q, k, v, out, dout and the gradients for cuDNN
  CudnnWorkspace,   // kernels/cuda/cudnn_attention.cpp: the execution plans' workspace
  Reduction,
  SplitK,           // kernels/cuda/gemm.cu: split-K partial products and the fused LoRA dA's partials
  Count
};

struct CudaState {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* lt_workspace = nullptr;
  size_t lt_workspace_bytes = 0;
  std::shared_ptr<void> scratch[int(Scratch::Count)];
  size_t scratch_bytes[int(Scratch::Count)] = {};
  std::atomic<int64_t> allocated{0}, peak{0};
  std::string name;
  int sm_count = 0;
  std::shared_ptr<void> gemm_plans;  // kernels/cuda/gemm.cu: cuBLASLt descriptors and algorithms by shape
  std::shared_ptr<void> cudnn;       // kernels/cuda/cudnn_attention.cpp: the cuDNN handle and attention graphs
};

namespace cuda {

[[noreturn]] void fail(const char* what, const char* detail, const char* file, int line);

#define ZL_CUDA_CHECK(call)                                                                          \
  do {                                                                                               \
    cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess) ::zerolora::kernels::cuda::fail(#call, cudaGetErrorString(e_), __FILE__, __LINE__); \
  } while (0)
#define ZL_CUBLAS_CHECK(call)                                                                        \
  do {                                                                                               \
    cublasStatus_t e_ = (call);                                                                      \
    if (e_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      ::zerolora::kernels::cuda::fail(#call, cublasLtGetStatusString(e_), __FILE__, __LINE__);       \
  } while (0)
// After a kernel launch: a launch error (bad configuration) surfaces here, not at the next sync.
#define ZL_CUDA_LAUNCHED() ZL_CUDA_CHECK(cudaGetLastError())

// A device buffer of at least `bytes` for `purpose`, owned by the state.
void* scratch(CudaState& s, Scratch purpose, size_t bytes);

// n floats rounded to bf16 (nearest even, NaN stays NaN, as core::f32_to_bf16) into out, and bf16 widened back
// to fp32 (kernels/cuda/elementwise.cu); out and in are device memory, enqueued on the state's stream.
void round_to_bf16(void* out, const float* in, int64_t n, CudaState& s);
void widen_bf16(float* out, const void* in, int64_t n, CudaState& s);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Blocks for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t b = ceil_div(n, threads);
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

}  // namespace cuda
}  // namespace zerolora::kernels
