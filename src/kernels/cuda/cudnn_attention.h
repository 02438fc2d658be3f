// Internal to kernels/cuda: cuDNN 9's fused attention (SDPA, flash) forward and backward through NVIDIA's
// cuDNN frontend graphs, for kernels/cuda/attention.cu. Compiled only when the build found the frontend and
// cuDNN (ZEROLORA_WITH_CUDNN); no cuDNN type appears here.
//
// Operands are bf16 in zerolora's layouts: q/out/dout/dq [B, T, NH, HD], k/v/dk/dv [B, T, NKV, HD]; stats is
// the fp32 log-sum-exp of the scaled scores [B, NH, T] (the `lse` of kernels.h, the same convention).
// Causal, GQA, right padding (lengths: the valid rows of each sequence; null = all T) and a sliding window
// (window > 0: a query sees its last `window` keys, itself included). Packing (kv_begin) is not expressible
// here: the caller keeps its own kernels for it. Rows past a sequence's length are not written reliably: the
// caller zeroes them.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace zerolora::kernels::cuda {

struct SdpaShape {
  int64_t B, T, NH, NKV, HD, window;
  float scale;
};

// Built with cuDNN and not switched off by ZEROLORA_CUDNN_SDPA=0 (read at every call: tests and benchmarks
// compare both paths in one process).
bool cudnn_attention_enabled();

// Enqueue on the state's stream and return true; or return false having enqueued nothing, when cuDNN cannot run
// this shape on this GPU (the graph is refused at build time: the reason is printed once per shape) — the caller
// then runs its own kernels. Errors after a graph was accepted throw core::Error.
bool cudnn_attention_forward(void* out, float* stats, const void* q, const void* k, const void* v,
                             const int32_t* lengths, const SdpaShape& shape, CudaState& s);
bool cudnn_attention_backward(void* dq, void* dk, void* dv, const void* q, const void* k, const void* v,
                              const void* out, const void* dout, const float* stats, const int32_t* lengths,
                              const SdpaShape& shape, CudaState& s);

// Graph executions so far in this process (tests check that the cuDNN path really ran).
int64_t cudnn_attention_executions();
// "cuDNN 9.19.0, frontend 1.16.0" (the library loaded at run time and the headers built with).
std::string cudnn_attention_version();

}  // namespace zerolora::kernels::cuda
