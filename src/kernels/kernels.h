// Every numeric loop of the engine, as forward/backward pairs of plain functions (llm.c style).
// Argument order: outputs, then inputs and weights, then sizes. Backward mirrors forward with d-prefixes.
// Anything a backward needs from its forward (rstd, lse) is an explicit output of the forward.
//
// Shape letters: M rows (= B*T tokens), B batch, T sequence, C hidden, NH query heads, NKV key/value
// heads, HD head dim, I intermediate, V vocab, N/K a GEMM's output/input width. All buffers row-major.
//
// Scalar type S of activations and trainable parameters: float (the engine) or double (the
// finite-difference gradient checks). Frozen big weights (linear layers, embedding) may instead be
// stored bf16 (--bf16) and are then multiplied through oneDNN's bf16 matmul with fp32 accumulation.
//
// Accumulation rule: functions whose comment says "(+=)" add into their output; all others overwrite.
//
// This header is the backend seam. Each op is declared twice:
//   - without a context: the CPU implementation (kernels/cpu), host pointers; tests of the CPU kernels call
//     these directly;
//   - with an execution context last (kernels/context.h): the entry point model/ and train/ call. It runs
//     the op on the context's device: the CPU backend for host(), the CUDA backend (kernels/cuda, float
//     only, device pointers, asynchronous on the context's stream) for a CudaContext.
#pragma once
#include <cstdint>
#include <memory>

#include "core/tensor.h"
#include "kernels/context.h"
#include "kernels/dropout.h"

namespace zerolora::kernels {

// ---------------------------------------------------------------------------------------------
// GEMM

// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions (as cblas_?gemm
// RowMajor). float goes to oneDNN (dnnl_sgemm); double is a plain threaded loop (tests only).
template <typename S>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
          const S* B, int64_t ldb, S beta, S* C, int64_t ldc);

// A backend's private copy of a frozen weight in the blocked layout its matmul prefers (see prepack).
struct PackedWeight;
// A weight stored as NF4 with double quantisation (QLoRA; kernels/nf4.h).
struct Nf4Weight;
// Its copy in a device's memory (kernels/nf4.h).
struct DeviceNf4;

// A frozen weight W [N, K] in nn.Linear layout (y = x W^T), stored F32, F64 or BF16, with an
// optional bias [N] (F32 or F64, same as the activations). Prepared once at load; read-only after.
struct FrozenWeight {
  core::Tensor weight;  // [N, K]
  core::Tensor bias;    // [N] or undefined (numel 0)
  int64_t N = 0, K = 0;
  std::shared_ptr<const PackedWeight> packed;  // set by prepack(); null = plain layout only
  // QLoRA: when set, the weight lives only here (4-bit codes + scales; `weight` is empty) and the linear
  // functions dequantise it tile by tile (float activations only).
  std::shared_ptr<const Nf4Weight> nf4;
  // The NF4 weight's copy on a device (set by to_device; `nf4` is then null).
  std::shared_ptr<const DeviceNf4> nf4_device;
  // --fp16: the activations entering this GEMM are rounded through IEEE half first (the weight itself
  // already holds half-representable values), so products see fp16 inputs; accumulation stays fp32.
  bool fp16_inputs = false;
  bool has_bias() const { return bias.numel() > 0; }
  Device device() const { return nf4_device ? Device::Cuda : weight.device(); }
  // Throws core::Error unless weight is 2-D F32/F64/BF16 and bias is empty or [N] (F64 for an F64
  // weight, F32 otherwise).
  static FrozenWeight make(core::Tensor weight, core::Tensor bias = {});
  static FrozenWeight make_nf4(std::shared_ptr<const Nf4Weight> nf4);
  // Resident bytes of the weight (plain, NF4 codes and scales, bias).
  int64_t resident_bytes() const;
  // Optional, once at load (F32/BF16 weights): reorders a copy of the weight into the blocked layout
  // oneDNN's matmul picks for M ~ m_hint rows on this CPU; linear_forward then multiplies with it
  // (any M). The plain weight stays (linear_backward_input and the tensor itself use it), so this
  // costs one more copy of the weight. Returns false and changes nothing where the CPU's best
  // kernel takes the plain layout anyway (e.g. AVX2-only CPUs) or has no bf16 matmul.
  bool prepack(int64_t m_hint = 2048);
};

// out[M,N] = inp[M,K] W^T (+ bias). S must match a F32/F64 weight; a BF16 weight needs S = float
// (inp is rounded to bf16, products accumulate in fp32).
template <typename S>
void linear_forward(S* out, const S* inp, const FrozenWeight& w, int64_t M);

// dinp[M,K] += dout[M,N] W     (+=; the activation gradient through a frozen weight; no weight grad)
template <typename S>
void linear_backward_input(S* dinp, const S* dout, const FrozenWeight& w, int64_t M);

// ---------------------------------------------------------------------------------------------
// Embedding: out[M,C] = table[ids[m], :]. table [V,C] is F32/F64/BF16. Ids outside [0,V) throw
// core::Error naming the id. (Frozen: no backward.)
template <typename S>
void embedding_forward(S* out, const int32_t* ids, const core::Tensor& table, int64_t M);
// The gather's backward for a trainable table (embed_tokens' LoRA): dtable[ids[m], :] += dout[m, :] for m in
// [0, M), dtable [V, C]. Deterministic: each column sums its rows in m order. Ids outside [0, V) throw (CPU).
template <typename S>
void embedding_backward(S* dtable, const int32_t* ids, const S* dout, int64_t M, int64_t V, int64_t C);

// ---------------------------------------------------------------------------------------------
// RMSNorm (HF LlamaRMSNorm): out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps), per row.
// inp [M,C], weight [C], rstd [M] (output, for backward).
template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* inp, const S* weight, int64_t M, int64_t C, double eps);

// dinp += d/dinp (+=); weight is frozen, so no weight gradient.
template <typename S>
void rmsnorm_backward(S* dinp, const S* dout, const S* inp, const S* weight, const S* rstd, int64_t M,
                      int64_t C);

// ---------------------------------------------------------------------------------------------
// RoPE in HF "rotate_half" layout: within each head of HD, element i pairs with i + HD/2:
//   x'[i]      = x[i] cos - x[i+HD/2] sin,   x'[i+HD/2] = x[i+HD/2] cos + x[i] sin
// with angle = positions[m] * inv_freq[i] (i < HD/2). x is [M, H, HD], rotated in place.
// cos_sin is a table [max_pos, HD/2, 2] (cos, sin) built by rope_table().
template <typename S>
void rope_table(S* cos_sin, const double* inv_freq, int64_t max_pos, int64_t HD);
template <typename S>
void rope_forward(S* x, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD);
// The transpose of the rotation (rotation by -angle), in place on the gradient.
template <typename S>
void rope_backward(S* dx, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD);

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention, flash style: never materialises a T x T matrix; keeps the
// log-sum-exp per (query, head) for the backward.
//   q [B,T,NH,HD], k/v [B,T,NKV,HD], out [B,T,NH,HD], lse [B,NH,T]; query head h reads kv head
//   h / (NH/NKV); scale 1/sqrt(HD).
//   lengths [B] (nullable = all T): right padding; query rows t >= lengths[b] get out = 0, lse = 0.
//   kv_begin [B*T] (nullable = 0): query t of row b attends keys s with kv_begin[b*T+t] <= s <= t
//   (packing: the first position of the query's own sample).
//   bf16 (float only; ignored for double): where the CPU has a native bf16 matmul (AMX, AVX512-BF16),
//   the products take q, k, v, dout, P and dS rounded to bf16 and accumulate in fp32, as autocast's
//   attention does (the softmax stays fp32), on the matrix units. Elsewhere, and with false: fp32.
//   window (>= 0; 0 = none): sliding-window attention as HF Mistral/Qwen2 define it (transformers'
//   sliding_window_overlay: kv_idx > q_idx - sliding_window): query t sees keys s with t - window < s <= t,
//   i.e. itself and the window - 1 keys before it, on top of kv_begin (s >= max(kv_begin, t - window + 1)).
struct AttentionShape {
  int64_t B, T, NH, NKV, HD;
  bool bf16 = false;
  int64_t window = 0;
};
template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin);

// dq, dk, dv are overwritten (=). Padded query rows contribute nothing.
template <typename S>
void attention_backward(S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v,
                        const S* out, const S* lse, const AttentionShape& shape, const int32_t* lengths,
                        const int32_t* kv_begin);

// Generation against a KV cache: the n new tokens (absolute positions p0 .. p0+n-1) attend to every cached
// position up to their own (window > 0: only the last `window` of them, itself included, as AttentionShape).
// q [n, NH, HD]; k_cache/v_cache [p0+n, NKV, HD] (the new tokens' rows included); out [n, NH, HD]. Scores
// and sums in double (the decoder is the reference the training forward is checked with).
template <typename S>
void attention_decode(S* out, const S* q, const S* k_cache, const S* v_cache, int64_t n, int64_t p0, int64_t NH,
                      int64_t NKV, int64_t HD, int64_t window = 0);

// ---------------------------------------------------------------------------------------------
// SwiGLU: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)). All [n]. The backward may run in place (dgate ==
// gate, dup == up: each element is read before it is written; the model's backward puts the gradients there).
template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n);
template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n);

// ---------------------------------------------------------------------------------------------
// Cross-entropy over one chunk of rows, in place: logits [M,V] become d(loss)/d(logits) * grad_scale,
// where loss = sum over rows with targets[m] != -100 of -log softmax(logits[m])[targets[m]].
// Rows with target -100 get a zero gradient row. Returns the summed loss (double) of the chunk;
// *count receives the number of non-ignored rows. A target outside [0,V) (other than -100) throws.
// If grad_scale == 0 the logits are left untouched (evaluation).
template <typename S>
double cross_entropy_forward_backward(S* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                                      int64_t* count);

// ---------------------------------------------------------------------------------------------
// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction), one step over a
// flat fp32 buffer. step is 1-based (the value after incrementing).
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step);

// sum of squares (in double) of a flat buffer, for global-norm clipping
double sum_squares(const float* x, int64_t n);

// ---------------------------------------------------------------------------------------------
// Helpers the model's block needs besides the ops above (host implementations).

// out = a + b, all [n] (out may alias a or b).
template <typename S>
void add(S* out, const S* a, const S* b, int64_t n);
// LoRA dropout: out = drop(x) (or out += drop(x) when accumulate), x and out [M, in]; dropped elements give
// 0, kept ones are scaled by 1/(1-p); element (m, i) is mask element m * in + i.
template <typename S>
void dropout_apply(S* out, const S* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate);

// LoRA's dropout fused into its products with the [M, in] operand (the context versions below say what each
// computes). On the CPU (float): the masked operand a block at a time in L2 (kernels/cpu/lora_dropout.cpp);
// false (nothing done) for double, which keeps the unfused reference path, for an [M, in] operand under 2^19
// elements (it stays in cache unfused) and with ZEROLORA_LORA_FUSED=0.
template <typename S>
bool lora_dropout_forward(S* u, const S* x, const S* A, int64_t M, int64_t in, int64_t r, const DropoutMask& mask);
template <typename S>
bool lora_dropout_backward_input(S* dx, const S* du, const S* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask);
template <typename S>
bool lora_dropout_weight_grad(S* dA, const S* du, const S* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask);
// ZEROLORA_LORA_FUSED: unset, empty or 1 = the fused products on every backend that has them (the default), 0 =
// dropout_apply + GEMMs (A/B runs); another value throws core::Error. Read once.
bool lora_fused_enabled();

// =============================================================================================
// Entry points with an execution context: the same ops, run on the context's device. For a CUDA context
// every pointer is device memory and S must be float (double is the CPU's gradient-check type).

template <typename S>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
          const S* B, int64_t ldb, S beta, S* C, int64_t ldc, const Context& ctx);
template <typename S>
void linear_forward(S* out, const S* inp, const FrozenWeight& w, int64_t M, const Context& ctx);
template <typename S>
void linear_backward_input(S* dinp, const S* dout, const FrozenWeight& w, int64_t M, const Context& ctx);
template <typename S>
void embedding_forward(S* out, const int32_t* ids, const core::Tensor& table, int64_t M, const Context& ctx);
template <typename S>
void embedding_backward(S* dtable, const int32_t* ids, const S* dout, int64_t M, int64_t V, int64_t C,
                        const Context& ctx);
template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* inp, const S* weight, int64_t M, int64_t C, double eps,
                     const Context& ctx);
template <typename S>
void rmsnorm_backward(S* dinp, const S* dout, const S* inp, const S* weight, const S* rstd, int64_t M, int64_t C,
                      const Context& ctx);
template <typename S>
void rope_forward(S* x, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                  const Context& ctx);
template <typename S>
void rope_backward(S* dx, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                   const Context& ctx);
template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin, const Context& ctx);
template <typename S>
void attention_backward(S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v, const S* out,
                        const S* lse, const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin,
                        const Context& ctx);
// Generation against a KV cache (as attention_decode above; window explicit here). On a CUDA context in fp32
// (the CPU sums in double), HD <= 256.
template <typename S>
void attention_decode(S* out, const S* q, const S* k_cache, const S* v_cache, int64_t n, int64_t p0, int64_t NH,
                      int64_t NKV, int64_t HD, int64_t window, const Context& ctx);
template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n, const Context& ctx);
template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n, const Context& ctx);
template <typename S>
void add(S* out, const S* a, const S* b, int64_t n, const Context& ctx);
template <typename S>
void fill_zero(S* x, int64_t n, const Context& ctx);
template <typename S>
void dropout_apply(S* out, const S* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate,
                   const Context& ctx);
// LoRA's dropout fused into its products with the [M, in] operand, where the context's backend has such kernels
// (CUDA: float, r 4/8/16/32/64; the host: float, above): u [M, r] = (mask * x) A^T; dx [M, in] += mask * (du A);
// dA [r, in] += du^T (mask * x). false: nothing done (double, other r on CUDA, ZEROLORA_LORA_FUSED=0): the
// caller runs dropout_apply and gemm, the same products.
template <typename S>
bool lora_dropout_forward(S* u, const S* x, const S* A, int64_t M, int64_t in, int64_t r, const DropoutMask& mask,
                          const Context& ctx);
template <typename S>
bool lora_dropout_backward_input(S* dx, const S* du, const S* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask, const Context& ctx);
template <typename S>
bool lora_dropout_weight_grad(S* dA, const S* du, const S* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask, const Context& ctx);
// Cross-entropy of one chunk (as cross_entropy_forward_backward), accumulated without waiting for the
// device: sums [3] doubles in ctx's memory, sums[0] += loss, sums[1] += counted rows; a target outside [0, V)
// other than -100 sets sums[2] = 1 + its row in the chunk (the CPU throws right away instead).
template <typename S>
void cross_entropy_accumulate(S* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                              double* sums, const Context& ctx);
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, const Context& ctx);
// Waits for the device (the value is needed on the host).
double sum_squares(const float* x, int64_t n, const Context& ctx);
void scale(float* x, int64_t n, double factor, const Context& ctx);

// A LoRA merge's update (model/merge.cpp): W [rows, cols] += scale * left [rows, r] right [r, cols], each entry
// formed in double: the r products summed in k order with fused multiply-adds from 0, then fma(scale, sum, W)
// rounded once to S. Entries are independent: every backend gives the same bits.
template <typename S>
void add_scaled_product(S* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale);
template <typename S>
void add_scaled_product(S* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, const Context& ctx);

// A frozen weight's copy in ctx's memory, for the linear entry points above (the same weight, shared, on the
// host context). Device copies keep the weight's dtype (NF4 stays NF4: its codes and scales are copied).
FrozenWeight to_device(const FrozenWeight& w, const Context& ctx);

}  // namespace zerolora::kernels
