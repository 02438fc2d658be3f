// Element-wise ops of the CUDA backend: embedding gather, SwiGLU, add, fill, scale and the LoRA dropout.
// Grid-stride loops over flat indices (64-bit), one thread per element; all memory bound and coalesced.
#include <cuda_bf16.h>

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__device__ inline int64_t first_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

// ---- embedding: one block row-loop per token; an id outside [0, V) gives a zero row (the CPU throws; a
// kernel cannot, and the ids were checked by the tokenizer / data loader before they reached the device)

template <typename T>
__device__ inline float widen(T v);
template <>
__device__ inline float widen<float>(float v) { return v; }
template <>
__device__ inline float widen<uint16_t>(uint16_t v) { return __uint_as_float(uint32_t(v) << 16); }
template <>
__device__ inline float widen<double>(double v) { return float(v); }

template <typename T>
__global__ void embedding_kernel(float* out, const int32_t* ids, const T* table, int64_t M, int64_t V, int64_t C) {
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const int64_t id = ids[m];
    float* o = out + m * C;
    if (id < 0 || id >= V) {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = 0.0f;
      continue;
    }
    const T* t = table + id * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = widen<T>(t[c]);
  }
}

// ---- embedding_backward: one thread per column, rows in m order (the CPU's sums; no atomics, so deterministic).
// Ids outside [0, V) are skipped (the forward gave them a zero row).
__global__ void embedding_backward_kernel(float* dtable, const int32_t* ids, const float* dout, int64_t M, int64_t V,
                                          int64_t C) {
  for (int64_t c = first_index(); c < C; c += grid_stride())
    for (int64_t m = 0; m < M; ++m) {
      const int64_t id = ids[m];
      if (id >= 0 && id < V) dtable[id * C + c] = __fadd_rn(dtable[id * C + c], dout[m * C + c]);
    }
}

// ---- SwiGLU (kernels/cpu/swiglu.cpp; expf here vs the CPU's Cephes exp: both within 2 ulp)

__global__ void swiglu_forward_kernel(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void swiglu_backward_kernel(float* dgate, float* dup, const float* dout, const float* gate,
                                       const float* up, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float g = gate[i], d = dout[i];
    const float sig = 1.0f / (1.0f + expf(-g));
    dgate[i] = d * up[i] * sig * (1.0f + g * (1.0f - sig));
    dup[i] = d * g * sig;
  }
}

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* x, int64_t n, float factor) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) x[i] *= factor;
}

// ---- dropout: element n of the flat [M, in] buffer is mask element n (= m * in + i). The value is formed as
// the CPU forms it, (keep * scale) * x, so a dropped element is +-0 (or NaN for a non-finite x) exactly as
// there; __fmul_rn / __fadd_rn keep nvcc from fusing the accumulation (out + v is two roundings).
template <bool Accumulate>
__global__ void dropout_kernel(float* out, const float* x, int64_t n, DropoutMask mask) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const float keep = mask.keep(uint64_t(i)) ? 1.0f : 0.0f;
    const float v = __fmul_rn(__fmul_rn(keep, mask.keep_scale), x[i]);
    out[i] = Accumulate ? __fadd_rn(out[i], v) : v;
  }
}

}  // namespace

void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t M, int64_t V, int64_t C,
                        CudaState& s) {
  if (M <= 0 || C <= 0) return;
  const int64_t blocks = (C + kThreads - 1) / kThreads;
  embedding_backward_kernel<<<unsigned(blocks), kThreads, 0, s.stream>>>(dtable, ids, dout, M, V, C);
}

void embedding_forward(float* out, const int32_t* ids, const core::Tensor& table, int64_t M, CudaState& s) {
  core::check(table.ndim() == 2, "embedding",
              "expected a 2-D table [vocab, hidden], got shape " + core::shape_str(table.shape()));
  core::check(table.device() == core::Device::Cuda, "embedding", "the table is not in device memory",
              "copy it with kernels::to_device first");
  const int64_t V = table.dim(0), C = table.dim(1);
  if (M <= 0 || C <= 0) return;
  const unsigned blocks = unsigned(M < 65535 * 8 ? M : 65535 * 8);
  switch (table.dtype()) {
    case core::DType::F32:
      embedding_kernel<float><<<blocks, kThreads, 0, s.stream>>>(out, ids, static_cast<const float*>(table.raw()),
                                                                 M, V, C);
      break;
    case core::DType::BF16:
      embedding_kernel<uint16_t><<<blocks, kThreads, 0, s.stream>>>(
          out, ids, static_cast<const uint16_t*>(table.raw()), M, V, C);
      break;
    case core::DType::F64:
      embedding_kernel<double><<<blocks, kThreads, 0, s.stream>>>(out, ids, static_cast<const double*>(table.raw()),
                                                                  M, V, C);
      break;
    default:
      throw core::Error("embedding", std::string("unsupported table dtype ") + core::dtype_name(table.dtype()),
                        "convert the table to F32 or BF16");
  }
  ZL_CUDA_LAUNCHED();
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, CudaState& s) {
  if (n <= 0) return;
  swiglu_forward_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(out, gate, up, n);
  ZL_CUDA_LAUNCHED();
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n,
                     CudaState& s) {
  if (n <= 0) return;
  swiglu_backward_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(dgate, dup, dout, gate, up, n);
  ZL_CUDA_LAUNCHED();
}

void add(float* out, const float* a, const float* b, int64_t n, CudaState& s) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(out, a, b, n);
  ZL_CUDA_LAUNCHED();
}

void fill_zero(void* x, size_t bytes, CudaState& s) {
  if (bytes == 0) return;
  ZL_CUDA_CHECK(cudaMemsetAsync(x, 0, bytes, s.stream));
}

void scale(float* x, int64_t n, float factor, CudaState& s) {
  if (n <= 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, s.stream>>>(x, n, factor);
  ZL_CUDA_LAUNCHED();
}

void dropout_apply(float* out, const float* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate,
                   CudaState& s) {
  const int64_t n = M * in;
  if (n <= 0) return;
  if (accumulate)
    dropout_kernel<true><<<grid_for(n), kThreads, 0, s.stream>>>(out, x, n, mask);
  else
    dropout_kernel<false><<<grid_for(n), kThreads, 0, s.stream>>>(out, x, n, mask);
  ZL_CUDA_LAUNCHED();
}

namespace {
__global__ void round_to_bf16_kernel(__nv_bfloat16* __restrict__ out, const float* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void widen_bf16_kernel(float* __restrict__ out, const __nv_bfloat16* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}
}  // namespace

void round_to_bf16(void* out, const float* in, int64_t n, CudaState& s) {
  if (n <= 0) return;
  round_to_bf16_kernel<<<grid_for(n), 256, 0, s.stream>>>(static_cast<__nv_bfloat16*>(out), in, n);
  ZL_CUDA_LAUNCHED();
}

void widen_bf16(float* out, const void* in, int64_t n, CudaState& s) {
  if (n <= 0) return;
  widen_bf16_kernel<<<grid_for(n), 256, 0, s.stream>>>(out, static_cast<const __nv_bfloat16*>(in), n);
  ZL_CUDA_LAUNCHED();
}

}  // namespace zerolora::kernels::cuda
