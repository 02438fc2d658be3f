// GEMMs through cuBLASLt: the fp32 GEMM of the LoRA branches and the frozen linear layers (bf16 weights:
// the input rounded to bf16, products accumulated in fp32, as the CPU's oneDNN bf16 matmul; f32 weights: fp32
// throughout, no TF32; NF4: dequantised on the device one weight at a time, then as bf16/f32).
//
// Row-major C[M,N] = op(A) op(B) is column-major C^T[N,M] = op(B)^T op(A)^T: cuBLASLt multiplies B first.
// Each shape's descriptors and the heuristic's algorithm are made once and kept in the context.
#include <cuda_bf16.h>

#include <cstdio>
#include <map>
#include <tuple>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

struct PlanKey {
  cudaDataType_t ab;
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c;  // the pointers' alignment (bytes, up to 256): algorithms must not assume more
  bool operator<(const PlanKey& o) const {
    return std::tie(ab, ta, tb, M, N, K, lda, ldb, ldc, align_a, align_b, align_c) <
           std::tie(o.ab, o.ta, o.tb, o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.align_a, o.align_b, o.align_c);
  }
};

uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

using Plans = std::map<PlanKey, std::unique_ptr<Plan>>;

Plans& plans_of(CudaState& s) {
  if (!s.gemm_plans) s.gemm_plans = std::make_shared<Plans>();
  return *static_cast<Plans*>(s.gemm_plans.get());
}

const Plan& plan_for(const PlanKey& k, CudaState& s) {
  Plans& plans = plans_of(s);
  auto it = plans.find(k);
  if (it != plans.end()) return *it->second;
  auto p = std::make_unique<Plan>();
  ZL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // column-major view: D^T[N,M] = opB'(B) * opA'(A); B is the first cuBLASLt operand
  const cublasOperation_t op_first = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  ZL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof op_first));
  ZL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof op_second));
  // stored (column-major) shapes: first operand N x K (tb: K x N), second K x M (ta: M x K)
  ZL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, k.ab, k.tb ? k.K : k.N, k.tb ? k.N : k.K, k.ldb));
  ZL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, k.ab, k.ta ? k.M : k.K, k.ta ? k.K : k.M, k.lda));
  ZL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, k.N, k.M, k.ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &s.lt_workspace_bytes, sizeof s.lt_workspace_bytes));
  // cuBLASLt's first operand is our B, its second our A
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.align_b,
                                                       sizeof k.align_b));
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.align_a,
                                                       sizeof k.align_a));
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k.align_c,
                                                       sizeof k.align_c));
  ZL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k.align_c,
                                                       sizeof k.align_c));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(s.lt, p->desc, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "no cuBLASLt algorithm for M %lld N %lld K %lld (%s)", (long long)k.M,
                  (long long)k.N, (long long)k.K, k.ab == CUDA_R_16BF ? "bf16" : "fp32");
    throw core::Error("cuda gemm", buf, "report this shape");
  }
  p->algo = result.algo;
  return *plans.emplace(k, std::move(p)).first->second;
}

void matmul(cudaDataType_t ab, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
            int64_t lda, const void* B, int64_t ldb, float beta, float* C, int64_t ldc, CudaState& s) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // cuBLASLt wants K > 0: C = beta C
    if (beta == 0.f) {
      for (int64_t m = 0; m < M; ++m) ZL_CUDA_CHECK(cudaMemsetAsync(C + m * ldc, 0, size_t(N) * 4, s.stream));
    } else if (beta != 1.f) {
      for (int64_t m = 0; m < M; ++m) scale(C + m * ldc, N, beta, s);
    }
    return;
  }
  const Plan& p = plan_for({ab, ta, tb, M, N, K, lda, ldb, ldc, alignment(A), alignment(B), alignment(C)}, s);
  ZL_CUBLAS_CHECK(cublasLtMatmul(s.lt, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                 s.lt_workspace, s.lt_workspace_bytes, s.stream));
}

// fp32 -> bf16, round to nearest even (NaN stays NaN), as core::f32_to_bf16
__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

// x rounded to the nearest IEEE half and back (--fp16's GEMM inputs)
__global__ void round_fp16_kernel(float* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __half2float(__float2half_rn(in[i]));
}

// out[m, :] = bias
__global__ void broadcast_rows_kernel(float* out, const float* bias, int64_t M, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = bias[i % N];
}

struct Operand {
  cudaDataType_t type;
  const void* data;
};

// The activation operand of a linear layer in the weight's type: bf16 (rounded into scratch), fp16-rounded
// fp32 (--fp16, into scratch), or the fp32 input itself.
Operand activation_operand(const float* x, int64_t n, cudaDataType_t weight_type, bool fp16_inputs, CudaState& s) {
  if (weight_type == CUDA_R_16BF) {
    auto* h = static_cast<__nv_bfloat16*>(scratch(s, Scratch::GemmInput, size_t(n) * 2));
    to_bf16_kernel<<<grid_for(n), 256, 0, s.stream>>>(h, x, n);
    ZL_CUDA_LAUNCHED();
    return {CUDA_R_16BF, h};
  }
  if (fp16_inputs) {
    auto* h = static_cast<float*>(scratch(s, Scratch::GemmInput, size_t(n) * 4));
    round_fp16_kernel<<<grid_for(n), 256, 0, s.stream>>>(h, x, n);
    ZL_CUDA_LAUNCHED();
    return {CUDA_R_32F, h};
  }
  return {CUDA_R_32F, x};
}

struct WeightView {
  cudaDataType_t type;
  const void* data;
  const float* bias;  // null: none
};

WeightView weight_view(const FrozenWeight& w, CudaState& s, const char* fn) {
  if (w.nf4_device) {
    const DeviceNf4& q = *w.nf4_device;
    const bool bf16 = q.compute_dtype == core::DType::BF16;
    void* buf = scratch(s, Scratch::Weight, size_t(q.N * q.K) * (bf16 ? 2 : 4));
    nf4_dequantize(buf, bf16, q, s);
    return {bf16 ? CUDA_R_16BF : CUDA_R_32F, buf, q.bias.numel() ? q.bias.data<float>() : nullptr};
  }
  if (w.weight.device() != Device::Cuda)
    throw core::Error(fn, "the weight is in host memory", "make its device copy with kernels::to_device");
  const float* bias = w.has_bias() ? w.bias.data<float>() : nullptr;
  if (w.weight.dtype() == core::DType::BF16) return {CUDA_R_16BF, w.weight.raw(), bias};
  if (w.weight.dtype() == core::DType::F32) return {CUDA_R_32F, w.weight.raw(), bias};
  throw core::Error(fn, std::string("a ") + core::dtype_name(w.weight.dtype()) + " weight has no GPU kernel",
                    "use bf16 or fp32 weights");
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, CudaState& s) {
  matmul(CUDA_R_32F, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
}

void linear_forward(float* out, const float* inp, const FrozenWeight& w, int64_t M, CudaState& s) {
  if (M == 0) return;
  const WeightView W = weight_view(w, s, "linear_forward");
  const Operand x = activation_operand(inp, M * w.K, W.type, w.fp16_inputs, s);
  float beta = 0.f;
  if (W.bias) {
    broadcast_rows_kernel<<<grid_for(M * w.N), 256, 0, s.stream>>>(out, W.bias, M, w.N);
    ZL_CUDA_LAUNCHED();
    beta = 1.f;
  }
  // out[M,N] = x[M,K] W[N,K]^T
  matmul(W.type, false, true, M, w.N, w.K, 1.f, x.data, w.K, W.data, w.K, beta, out, w.N, s);
}

void linear_backward_input(float* dinp, const float* dout, const FrozenWeight& w, int64_t M, CudaState& s) {
  if (M == 0) return;
  const WeightView W = weight_view(w, s, "linear_backward_input");
  const Operand g = activation_operand(dout, M * w.N, W.type, w.fp16_inputs, s);
  // dinp[M,K] += dout[M,N] W[N,K]
  matmul(W.type, false, false, M, w.K, w.N, 1.f, g.data, w.N, W.data, w.K, 1.f, dinp, w.K, s);
}

}  // namespace zerolora::kernels::cuda
