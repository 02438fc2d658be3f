// GEMMs through cuBLASLt: the fp32 GEMM of the LoRA branches and the frozen linear layers (bf16 weights:
// the input rounded to bf16, products accumulated in fp32, as the CPU's oneDNN bf16 matmul; f32 weights: fp32
// throughout, no TF32; NF4: dequantised on the device one weight at a time, then as bf16/f32).
//
// Row-major C[M,N] = op(A) op(B) is column-major C^T[N,M] = op(B)^T op(A)^T: cuBLASLt multiplies B first.
// Each shape's descriptors and the heuristic's algorithm are made once and kept in the context.
//
// Split-K (fp32 gemm only): a product with a small output and a long K (the LoRA weight gradients: dB [out, r]
// and dA [r, in] summed over K = M = B*T rows) gives the heuristic's kernel a handful of output tiles, so a
// handful of CTAs on 132 SMs. Such a product runs as S products over fixed chunks of K, one strided-batched
// cuBLASLt matmul into the SplitK scratch (plus one plain matmul for a shorter last chunk), then one reduction
// kernel C = beta C + alpha sum_s partial_s that adds the partials in the order s = 0, 1, ..., S-1: the same
// shape gives the same bits run to run (exact resume relies on it). fp32 throughout (no TF32).
//
// The rule for S (split_for): tiles = ceil(M/64) ceil(N/64), the output tiles of a 64 x 64 fp32 kernel (an
// estimate of the heuristic's choice, not a query). No split when tiles >= the SM count (one wave already
// fills the GPU) or K < 2 x 512. Otherwise S = the largest power of two <= min(ceil(2 SMs / tiles),
// K / 512, 64), so about two waves of CTAs, each chunk at least 512 deep, at most 64 partials, and the
// partials at most 64 MiB; chunk = ceil(K / S) rounded up to a multiple of 64 (every part's operand pointer
// keeps the base pointer's alignment). A power of two divides the usual K (B*T = 16384) into equal chunks:
// one batched matmul, no remainder. On an H200 (132 SMs), TinyLlama, r 16, K = 16384: every 2048 x 16 gradient
// (dA of q, k, v, o, gate, up; dB of q, o, down; 32 tiles) S 8; dB of k, v (256 x 16, 4 tiles) S 32; dB of
// gate, up and dA of down (5632 x 16, 88 tiles) S 2. set_gemm_split_k overrides the rule (benchmarks, tests), as
// does ZEROLORA_GEMM_SPLIT_K (auto: the rule, the default; 0: never split; N: N parts where K allows 64-deep chunks).
//
// The fused LoRA dropout ops at the end (lora_dropout_forward, lora_dropout_weight_grad,
// lora_dropout_backward_input) apply the dropout mask while reading the operand, so the masked input [M, in] is
// never written and read back; ZEROLORA_LORA_FUSED=0 switches them off (lora_linear then runs dropout_apply and
// the GEMMs, as on the CPU).
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
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
  int32_t batch = 1;                   // > 1: a strided batch (split-K's parts), with these element strides
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  bool operator<(const PlanKey& o) const {
    return std::tie(ab, ta, tb, M, N, K, lda, ldb, ldc, align_a, align_b, align_c, batch, stride_a, stride_b,
                    stride_c) < std::tie(o.ab, o.ta, o.tb, o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.align_a, o.align_b,
                                         o.align_c, o.batch, o.stride_a, o.stride_b, o.stride_c);
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
  if (k.batch > 1) {
    const std::pair<cublasLtMatrixLayout_t, int64_t> strided[] = {
        {p->a, k.stride_b}, {p->b, k.stride_a}, {p->c, k.stride_c}};
    for (const auto& [layout, stride] : strided) {
      ZL_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &k.batch, sizeof k.batch));
      ZL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                       sizeof stride));
    }
  }
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
    std::snprintf(buf, sizeof buf, "no cuBLASLt algorithm for M %lld N %lld K %lld batch %d (%s)", (long long)k.M,
                  (long long)k.N, (long long)k.K, int(k.batch), k.ab == CUDA_R_16BF ? "bf16" : "fp32");
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

// batch products C_i = op(A_i) op(B_i) (K > 0, alpha 1, beta 0), X_i = X + i * stride_x: fp32
void matmul_strided_batch(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                          int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b, float* C, int64_t ldc,
                          int64_t stride_c, int32_t batch, CudaState& s) {
  PlanKey key{CUDA_R_32F, ta, tb, M, N, K, lda, ldb, ldc, alignment(A), alignment(B), alignment(C)};
  key.batch = batch, key.stride_a = stride_a, key.stride_b = stride_b, key.stride_c = stride_c;
  const Plan& p = plan_for(key, s);
  const float one = 1.f, zero = 0.f;
  ZL_CUBLAS_CHECK(cublasLtMatmul(s.lt, p.desc, &one, B, p.a, A, p.b, &zero, C, p.c, C, p.c, &p.algo, s.lt_workspace,
                                 s.lt_workspace_bytes, s.stream));
}

// ---- split-K (see the top of the file for the rule) ------------------------------------------------------

constexpr int64_t kSplitTile = 64;           // the output tile assumed for the heuristic's fp32 kernel
constexpr int64_t kSplitMinChunk = 512;      // each part multiplies at least this deep (automatic rule)
constexpr int64_t kSplitChunkMultiple = 64;  // chunk depth: 64 floats = 256 bytes, so part pointers stay aligned
constexpr int64_t kSplitMaxParts = 64;
constexpr int64_t kSplitMaxBytes = int64_t(64) << 20;
// < 0: the rule; 0: never; > 0: that many parts asked for; kUnread: ZEROLORA_GEMM_SPLIT_K not read yet
constexpr int kUnread = -2;
std::atomic<int> g_split_k_mode{kUnread};

int split_k_mode() {
  int mode = g_split_k_mode.load(std::memory_order_relaxed);
  if (mode != kUnread) return mode;
  mode = -1;
  if (const char* v = std::getenv("ZEROLORA_GEMM_SPLIT_K"); v && *v && std::string(v) != "auto") {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    core::check(*end == 0 && n >= 0 && n <= 1024, "ZEROLORA_GEMM_SPLIT_K", std::string("unknown value '") + v + "'",
                "set auto (the rule, the default), 0 (no split-K) or a number of parts");
    mode = int(n);
  }
  int expected = kUnread;
  g_split_k_mode.compare_exchange_strong(expected, mode);
  return g_split_k_mode.load(std::memory_order_relaxed);
}

struct Split {
  int64_t chunk = 0;  // K of every batched part
  int32_t full = 0;   // parts of depth chunk (the batch)
  int64_t rest = 0;   // K of one more, shorter part (0: none)
  int parts() const { return full + (rest > 0 ? 1 : 0); }
};

// The partials' stride in floats: a multiple of 64 (256 bytes), as cuBLASLt was told the base's alignment.
int64_t partial_stride(int64_t M, int64_t N) { return ceil_div(M * N, 64) * 64; }

Split split_for(int64_t M, int64_t N, int64_t K, int sm_count) {
  const int mode = split_k_mode();
  if (mode == 0 || K < 2 * kSplitChunkMultiple) return {};
  int64_t S = 0;
  if (mode > 0) {
    S = std::min<int64_t>({mode, K / kSplitChunkMultiple, kSplitMaxBytes / (4 * partial_stride(M, N))});
  } else {
    const int64_t tiles = ceil_div(M, kSplitTile) * ceil_div(N, kSplitTile);
    const int64_t sms = sm_count > 0 ? sm_count : 1;
    if (tiles >= sms || K < 2 * kSplitMinChunk) return {};
    const int64_t want = std::min(
        {ceil_div(2 * sms, tiles), K / kSplitMinChunk, kSplitMaxParts, kSplitMaxBytes / (4 * partial_stride(M, N))});
    S = 1;
    while (S * 2 <= want) S *= 2;
  }
  if (S < 2) return {};
  Split sp;
  sp.chunk = ceil_div(ceil_div(K, S), kSplitChunkMultiple) * kSplitChunkMultiple;
  sp.full = int32_t(K / sp.chunk);
  sp.rest = K - int64_t(sp.full) * sp.chunk;
  if (sp.parts() < 2) return {};
  return sp;
}

// C[m, n] = beta C[m, n] + alpha (p_0 + p_1 + ... + p_{parts-1})[m, n], the partials added in that order; beta 0
// does not read C (BLAS semantics: a NaN there does not propagate).
__global__ void split_k_reduce_kernel(float* C, int64_t ldc, const float* partials, int64_t stride, int parts,
                                      int64_t M, int64_t N, float alpha, float beta) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = partials[i];
    for (int p = 1; p < parts; ++p) acc = __fadd_rn(acc, partials[p * stride + i]);
    const int64_t m = i / N, n = i - m * N;
    float* c = C + m * ldc + n;
    *c = beta == 0.f ? __fmul_rn(alpha, acc) : __fadd_rn(__fmul_rn(alpha, acc), __fmul_rn(beta, *c));
  }
}

void split_k_reduce(float* C, int64_t ldc, const float* partials, int64_t stride, int parts, int64_t M, int64_t N,
                    float alpha, float beta, CudaState& s) {
  split_k_reduce_kernel<<<grid_for(M * N), 256, 0, s.stream>>>(C, ldc, partials, stride, parts, M, N, alpha, beta);
  ZL_CUDA_LAUNCHED();
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
    void* h = scratch(s, Scratch::GemmInput, size_t(n) * 2);
    round_to_bf16(h, x, n, s);
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
    // a bias on the FrozenWeight (--lora_bias trains it) replaces the NF4 weight's own
    const float* bias = w.has_bias() ? w.bias.data<float>() : q.bias.numel() ? q.bias.data<float>() : nullptr;
    return {bf16 ? CUDA_R_16BF : CUDA_R_32F, buf, bias};
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

// The heuristic's algorithm for an fp32 gemm of this shape (pointers 256-byte aligned; batch > 1: a strided batch
// as split-K runs it): "algo A tile T splitK S reduction R swizzle W stages G" with cuBLASLt's ids (cublasLt.h:
// cublasLtMatmulTile_t, cublasLtReductionScheme_t, cublasLtMatmulStages_t). For benchmarks: what the rule is up
// against.
std::string gemm_algo_summary(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int32_t batch,
                              CudaState& s) {
  const int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N, ldc = N;
  PlanKey key{CUDA_R_32F, trans_a, trans_b, M, N, K, lda, ldb, ldc, 256, 256, 256};
  if (batch > 1) {
    key.batch = batch, key.stride_a = trans_a ? K * lda : K, key.stride_b = trans_b ? K : K * ldb;
    key.stride_c = partial_stride(M, N);
  }
  const Plan& p = plan_for(key, s);
  int32_t id = 0, splitk = 0;
  uint32_t tile = 0, reduction = 0, swizzle = 0, stages = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof reduction,
                                       &w);
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof swizzle, &w);
  cublasLtMatmulAlgoConfigGetAttribute(&p.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
  char buf[160];
  std::snprintf(buf, sizeof buf, "algo %d tile %u splitK %d reduction %u swizzle %u stages %u", int(id), unsigned(tile),
                int(splitk), unsigned(reduction), unsigned(swizzle), unsigned(stages));
  return buf;
}

int set_gemm_split_k(int mode) {
  const int before = split_k_mode();
  g_split_k_mode.store(mode < 0 ? -1 : mode);
  return before;
}

int gemm_split_k_parts(int64_t M, int64_t N, int64_t K, const CudaState& s) {
  if (M <= 0 || N <= 0 || K <= 0) return 1;
  const Split sp = split_for(M, N, K, s.sm_count);
  return sp.parts() < 2 ? 1 : sp.parts();
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, CudaState& s) {
  const Split sp = (M > 0 && N > 0 && K > 0) ? split_for(M, N, K, s.sm_count) : Split{};
  if (sp.parts() < 2) {
    matmul(CUDA_R_32F, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
    return;
  }
  // part i multiplies K rows [i chunk, (i+1) chunk) of op(A)'s columns and op(B)'s rows
  const int64_t stride = partial_stride(M, N);
  auto* partials = static_cast<float*>(scratch(s, Scratch::SplitK, size_t(sp.parts() * stride) * sizeof(float)));
  const int64_t step_a = trans_a ? sp.chunk * lda : sp.chunk;  // A [K, M] (trans_a) or [M, K]
  const int64_t step_b = trans_b ? sp.chunk : sp.chunk * ldb;  // B [N, K] (trans_b) or [K, N]
  if (sp.full > 1) {
    matmul_strided_batch(trans_a, trans_b, M, N, sp.chunk, A, lda, step_a, B, ldb, step_b, partials, N, stride, sp.full,
                         s);
  } else {
    matmul(CUDA_R_32F, trans_a, trans_b, M, N, sp.chunk, 1.f, A, lda, B, ldb, 0.f, partials, N, s);
  }
  if (sp.rest > 0)
    matmul(CUDA_R_32F, trans_a, trans_b, M, N, sp.rest, 1.f, A + sp.full * step_a, lda, B + sp.full * step_b, ldb, 0.f,
           partials + sp.full * stride, N, s);
  split_k_reduce(C, ldc, partials, stride, sp.parts(), M, N, alpha, beta, s);
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

// ---- the LoRA branch's dropout, fused into its products with the input's shape [M, in] ---------------------
// Unfused (lora_linear on the CPU), the forward makes h = drop(x) [M, in] (read x, write h) and reads it for
// u = h A^T: 3 passes over an [M, in] fp32 tensor; fused, 1 (x read once). The backward makes h again (2),
// reads it for dA (1), writes du A into it (1) and reads it with dx to add it masked into dx (3): 7 passes;
// fused, dA reads x once and dx is read and written once: 3. At TinyLlama's shapes (M 16384, sum of in over the
// 7 projections 17920 per layer, 22 layers) that is 6 passes of 1.18 GB per layer fewer: ~155 GB per step, about
// 35 ms at 4.4 TB/s. The mask is the same hash of element m * in + i, the masked value formed as dropout_apply
// forms it ((keep * scale) * x, rounded), so only the order of the sums differs from the unfused path.
namespace {

constexpr int kFuseCols = 128;       // threads per block, one column i of [M, in] each
constexpr int kFuseRows = 64;        // rows of du [M, r] staged in shared memory at a time
constexpr int64_t kDaMinRows = 256;  // dA: rows one block sums before writing its partial
constexpr int64_t kDaMaxParts = 64;

__device__ inline float masked(const DropoutMask& mask, int64_t n, float v) {
  const float keep = mask.keep(uint64_t(n)) ? 1.0f : 0.0f;
  return __fmul_rn(__fmul_rn(keep, mask.keep_scale), v);
}

// du rows [m0, m0 + rows) ([M, R], contiguous) into shared memory
template <int R>
__device__ inline void stage_du(float4* du_s, const float* __restrict__ du, int64_t m0, int rows) {
  float* d = reinterpret_cast<float*>(du_s);
  const float* src = du + m0 * R;
  for (int j = threadIdx.x; j < rows * R; j += blockDim.x) d[j] = src[j];
}

// dx[m, i] += mask(m, i) * sum_k du[m, k] A[k, i]   (block: kFuseRows rows x kFuseCols columns; A's column in
// registers, du's rows broadcast from shared memory; k summed in order)
template <int R>
__global__ void __launch_bounds__(kFuseCols)
    lora_dropout_dx_kernel(float* __restrict__ dx, const float* __restrict__ du, const float* __restrict__ A, int64_t M,
                           int64_t in, DropoutMask mask) {
  __shared__ float4 du_s[kFuseRows * R / 4];
  const int64_t m0 = int64_t(blockIdx.y) * kFuseRows;
  const int rows = int(min(int64_t(kFuseRows), M - m0));
  stage_du<R>(du_s, du, m0, rows);
  __syncthreads();
  const int64_t i = int64_t(blockIdx.x) * kFuseCols + threadIdx.x;
  if (i >= in) return;
  float a[R];
#pragma unroll
  for (int k = 0; k < R; ++k) a[k] = A[k * in + i];
#pragma unroll 4
  for (int mm = 0; mm < rows; ++mm) {
    float h = 0.f;
#pragma unroll
    for (int k4 = 0; k4 < R / 4; ++k4) {
      const float4 d = du_s[mm * (R / 4) + k4];
      h = fmaf(d.x, a[4 * k4], h);
      h = fmaf(d.y, a[4 * k4 + 1], h);
      h = fmaf(d.z, a[4 * k4 + 2], h);
      h = fmaf(d.w, a[4 * k4 + 3], h);
    }
    const int64_t n = (m0 + mm) * in + i;
    dx[n] = __fadd_rn(dx[n], masked(mask, n, h));
  }
}

// partial p [R, in] = sum over rows m of part p (in order) of du[m, :]^T drop(x)[m, i]
template <int R>
__global__ void __launch_bounds__(kFuseCols)
    lora_dropout_da_kernel(float* __restrict__ partials, int64_t stride, const float* __restrict__ du,
                           const float* __restrict__ x, int64_t M, int64_t in, int64_t rows_per_part,
                           DropoutMask mask) {
  __shared__ float4 du_s[kFuseRows * R / 4];
  const int64_t i = int64_t(blockIdx.x) * kFuseCols + threadIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * rows_per_part, end = min(M, begin + rows_per_part);
  float acc[R];
#pragma unroll
  for (int k = 0; k < R; ++k) acc[k] = 0.f;
  for (int64_t m0 = begin; m0 < end; m0 += kFuseRows) {
    const int rows = int(min(int64_t(kFuseRows), end - m0));
    __syncthreads();  // the previous rows are consumed
    stage_du<R>(du_s, du, m0, rows);
    __syncthreads();
    if (i < in) {
#pragma unroll 8
      for (int mm = 0; mm < rows; ++mm) {
        const int64_t n = (m0 + mm) * in + i;
        const float v = masked(mask, n, x[n]);
#pragma unroll
        for (int k4 = 0; k4 < R / 4; ++k4) {
          const float4 d = du_s[mm * (R / 4) + k4];
          acc[4 * k4] = fmaf(d.x, v, acc[4 * k4]);
          acc[4 * k4 + 1] = fmaf(d.y, v, acc[4 * k4 + 1]);
          acc[4 * k4 + 2] = fmaf(d.z, v, acc[4 * k4 + 2]);
          acc[4 * k4 + 3] = fmaf(d.w, v, acc[4 * k4 + 3]);
        }
      }
    }
  }
  if (i >= in) return;
  float* p = partials + int64_t(blockIdx.y) * stride;
#pragma unroll
  for (int k = 0; k < R; ++k) p[k * in + i] = acc[k];
}

// u [M, R] = drop(x) [M, in] A [R, in]^T. Block: kFwdRows rows, 128 threads; thread t owns row t / 4 and the
// R / 4 consecutive columns of u from (t % 4) R / 4. Per step, kFwdCols columns of x (masked as loaded, once per
// element) and the same rows of at = A^T [in, R] (made once per call: 4 R in bytes) are staged in shared memory,
// both read and stored contiguously; every thread then runs its column loop (i in order within the step, the
// steps in order).
constexpr int kFwdRows = 32;
constexpr int kFwdCols = 64;
constexpr int kFwdThreads = 128;  // 4 per row

template <int R>
__global__ void __launch_bounds__(kFwdThreads)
    lora_dropout_forward_kernel(float* __restrict__ u, const float* __restrict__ x, const float* __restrict__ at,
                                int64_t M, int64_t in, DropoutMask mask) {
  constexpr int Q = R / 4;                       // u columns per thread
  __shared__ float x_s[kFwdRows][kFwdCols + 1];  // + 1: the 8 rows a warp reads at one column in distinct banks
  __shared__ float4 a_s[kFwdCols][Q];            // a_s[j][q] = at[c0 + j, 4 q .. 4 q + 3]
  static_assert(kFwdThreads == 4 * kFwdRows, "4 threads per row");
  const int row = threadIdx.x / 4, kq = threadIdx.x % 4;
  const int64_t m0 = int64_t(blockIdx.x) * kFwdRows;
  float acc[Q];
#pragma unroll
  for (int q = 0; q < Q; ++q) acc[q] = 0.f;
  for (int64_t c0 = 0; c0 < in; c0 += kFwdCols) {
    __syncthreads();  // the previous step's tiles are consumed
#pragma unroll
    for (int e = threadIdx.x; e < kFwdRows * kFwdCols; e += kFwdThreads) {  // 16 loads in flight per thread
      const int rr = e / kFwdCols, j = e % kFwdCols;
      const int64_t m = m0 + rr, i = c0 + j;
      float v = 0.f;
      if (m < M && i < in) {
        const int64_t n = m * in + i;
        v = masked(mask, n, x[n]);
      }
      x_s[rr][j] = v;
    }
    float* a_flat = reinterpret_cast<float*>(a_s);
    const int64_t avail = (in - c0) * R;  // at's elements left from row c0
#pragma unroll 4
    for (int e = threadIdx.x; e < R * kFwdCols; e += kFwdThreads) a_flat[e] = e < avail ? at[c0 * R + e] : 0.f;
    __syncthreads();
#pragma unroll 8
    for (int j = 0; j < kFwdCols; ++j) {
      const float xv = x_s[row][j];
#pragma unroll
      for (int q4 = 0; q4 < Q / 4; ++q4) {
        const float4 a = a_s[j][kq * (Q / 4) + q4];
        acc[4 * q4] = fmaf(xv, a.x, acc[4 * q4]);
        acc[4 * q4 + 1] = fmaf(xv, a.y, acc[4 * q4 + 1]);
        acc[4 * q4 + 2] = fmaf(xv, a.z, acc[4 * q4 + 2]);
        acc[4 * q4 + 3] = fmaf(xv, a.w, acc[4 * q4 + 3]);
      }
      if constexpr (Q % 4 != 0) {  // R 4 and 8: a thread's Q (1 or 2) values are part of a float4
        const float* a = reinterpret_cast<const float*>(&a_s[j][0]);
#pragma unroll
        for (int q = 0; q < Q; ++q) acc[q] = fmaf(xv, a[kq * Q + q], acc[q]);
      }
    }
  }
  const int64_t m = m0 + row;
  if (m >= M) return;
#pragma unroll
  for (int q = 0; q < Q; ++q) u[m * R + kq * Q + q] = acc[q];
}

// at [in, R] = A [R, in]^T
__global__ void transpose_kernel(float* __restrict__ at, const float* __restrict__ A, int64_t R, int64_t in) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < R * in; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / in, i = e - k * in;
    at[i * R + k] = A[e];
  }
}

template <int R>
void launch_forward(float* u, const float* x, const float* A, int64_t M, int64_t in, const DropoutMask& mask,
                    CudaState& s) {
  auto* at = static_cast<float*>(scratch(s, Scratch::SplitK, size_t(R * in) * sizeof(float)));
  transpose_kernel<<<grid_for(R * in), 256, 0, s.stream>>>(at, A, R, in);
  ZL_CUDA_LAUNCHED();
  lora_dropout_forward_kernel<R><<<unsigned(ceil_div(M, kFwdRows)), kFwdThreads, 0, s.stream>>>(u, x, at, M, in, mask);
  ZL_CUDA_LAUNCHED();
}

template <int R>
void launch_dx(float* dx, const float* du, const float* A, int64_t M, int64_t in, const DropoutMask& mask,
               CudaState& s) {
  const dim3 grid(unsigned(ceil_div(in, kFuseCols)), unsigned(ceil_div(M, kFuseRows)));
  lora_dropout_dx_kernel<R><<<grid, kFuseCols, 0, s.stream>>>(dx, du, A, M, in, mask);
  ZL_CUDA_LAUNCHED();
}

template <int R>
void launch_da(float* dA, const float* du, const float* x, int64_t M, int64_t in, const DropoutMask& mask,
               CudaState& s) {
  const int64_t parts = std::min(kDaMaxParts, ceil_div(M, kDaMinRows));
  const int64_t rows_per_part = ceil_div(ceil_div(M, parts), kFuseRows) * kFuseRows;
  const int64_t used = ceil_div(M, rows_per_part);
  const int64_t stride = partial_stride(R, in);
  auto* partials = static_cast<float*>(scratch(s, Scratch::SplitK, size_t(used * stride) * sizeof(float)));
  const dim3 grid(unsigned(ceil_div(in, kFuseCols)), unsigned(used));
  lora_dropout_da_kernel<R><<<grid, kFuseCols, 0, s.stream>>>(partials, stride, du, x, M, in, rows_per_part, mask);
  ZL_CUDA_LAUNCHED();
  split_k_reduce(dA, in, partials, stride, int(used), R, in, 1.f, 1.f, s);
}

bool fused_enabled() { return kernels::lora_fused_enabled(); }  // ZEROLORA_LORA_FUSED (kernels.h)

bool fusable(int64_t r, int64_t M, int64_t in) {
  return fused_enabled() && (r == 4 || r == 8 || r == 16 || r == 32 || r == 64) && ceil_div(M, kFuseRows) <= 65535 &&
         ceil_div(M, kFwdRows) <= (int64_t(1) << 31) - 1 && ceil_div(in, kFuseCols) <= (int64_t(1) << 31) - 1;
}

}  // namespace

bool lora_dropout_forward(float* u, const float* x, const float* A, int64_t M, int64_t in, int64_t r,
                          const DropoutMask& mask, CudaState& s) {
  if (!fusable(r, M, in)) return false;
  if (M <= 0) return true;
  if (in <= 0) {  // u = 0
    fill_zero(u, size_t(M * r) * sizeof(float), s);
    return true;
  }
  switch (r) {
    case 4:
      launch_forward<4>(u, x, A, M, in, mask, s);
      break;
    case 8:
      launch_forward<8>(u, x, A, M, in, mask, s);
      break;
    case 16:
      launch_forward<16>(u, x, A, M, in, mask, s);
      break;
    case 32:
      launch_forward<32>(u, x, A, M, in, mask, s);
      break;
    default:
      launch_forward<64>(u, x, A, M, in, mask, s);
      break;
  }
  return true;
}

bool lora_dropout_backward_input(float* dx, const float* du, const float* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask, CudaState& s) {
  if (!fusable(r, M, in)) return false;
  if (M <= 0 || in <= 0) return true;
  switch (r) {
    case 4:
      launch_dx<4>(dx, du, A, M, in, mask, s);
      break;
    case 8:
      launch_dx<8>(dx, du, A, M, in, mask, s);
      break;
    case 16:
      launch_dx<16>(dx, du, A, M, in, mask, s);
      break;
    case 32:
      launch_dx<32>(dx, du, A, M, in, mask, s);
      break;
    default:
      launch_dx<64>(dx, du, A, M, in, mask, s);
      break;
  }
  return true;
}

bool lora_dropout_weight_grad(float* dA, const float* du, const float* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask, CudaState& s) {
  if (!fusable(r, M, in)) return false;
  if (M <= 0 || in <= 0) return true;
  switch (r) {
    case 4:
      launch_da<4>(dA, du, x, M, in, mask, s);
      break;
    case 8:
      launch_da<8>(dA, du, x, M, in, mask, s);
      break;
    case 16:
      launch_da<16>(dA, du, x, M, in, mask, s);
      break;
    case 32:
      launch_da<32>(dA, du, x, M, in, mask, s);
      break;
    default:
      launch_da<64>(dA, du, x, M, in, mask, s);
      break;
  }
  return true;
}

}  // namespace zerolora::kernels::cuda
