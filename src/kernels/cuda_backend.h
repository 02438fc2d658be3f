// The CUDA backend's entry points, called by the dispatch in kernels/dispatch.cpp and kernels/context.cpp
// (nothing else includes this). Plain C++: no CUDA type appears here, so the dispatch compiles without
// the toolkit. kernels/cuda/*.cu implement it; kernels/no_cuda/no_cuda.cpp implements it with a
// core::Error where the build has no CUDA.
//
// Conventions (as kernels.h, over device memory): every pointer is device memory of the context's GPU,
// activations and trainable parameters are float, every op is enqueued on the context's stream and
// returns without waiting, unless its comment says it synchronises. Semantics, shapes and accumulation
// rules are exactly those of the kernels.h function of the same name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/context.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

namespace zerolora::kernels::cuda {

// --- devices, contexts, memory (kernels/cuda/context.cu)
bool built();
int device_count();
std::string devices_summary();
CudaState* create_state(int index);
void destroy_state(CudaState* s);
std::string device_name(const CudaState& s);
int64_t allocated_bytes(const CudaState& s);
int64_t peak_allocated_bytes(const CudaState& s);
std::shared_ptr<void> alloc(size_t bytes, CudaState& s);
void copy_to_device(void* dst, const void* src, size_t bytes, CudaState& s);
void copy_to_host(void* dst, const void* src, size_t bytes, CudaState& s);
void copy_on_device(void* dst, const void* src, size_t bytes, CudaState& s);
void synchronize(CudaState& s);
// page-locked host memory; the copy queue of kernels::CopyQueue (a second stream, two events per slot)
std::shared_ptr<void> pinned_alloc(size_t bytes, CudaState& s);
std::shared_ptr<void> copy_queue_create(int slots, CudaState& s);
void copy_queue_compute_done_with(void* q, int slot, CudaState& s);
void copy_queue_copy(void* q, int slot, void* dst, const void* src, size_t bytes, CudaState& s);
void copy_queue_compute_waits_for(void* q, int slot, CudaState& s);
void copy_queue_host_waits_for(void* q, int slot, CudaState& s);
void copy_queue_synchronize(void* q, CudaState& s);

// --- GEMMs through cuBLASLt (kernels/cuda/gemm.cu)
// C = alpha op(A) op(B) + beta C, row-major with leading dimensions, fp32 (no TF32).
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, CudaState& s);
// Split-K (gemm.cu's rule, at the top of that file): the parts `gemm` splits an M x N x K product into on this GPU;
// set_gemm_split_k forces a mode (< 0 the rule, 0 never, > 0 that many parts; ZEROLORA_GEMM_SPLIT_K sets it at
// start) and returns the previous one; gemm_algo_summary names the algorithm cuBLASLt's heuristic picks (bench).
int set_gemm_split_k(int mode);
int gemm_split_k_parts(int64_t M, int64_t N, int64_t K, const CudaState& s);
std::string gemm_algo_summary(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int32_t batch, CudaState& s);
// LoRA's dropout fused into its products with the [M, in] operand (kernels.h's lora_dropout_*): false when not
// fused for this r or shape, or ZEROLORA_LORA_FUSED=0 (nothing done).
bool lora_dropout_forward(float* u, const float* x, const float* A, int64_t M, int64_t in, int64_t r,
                          const DropoutMask& mask, CudaState& s);
bool lora_dropout_backward_input(float* dx, const float* du, const float* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask, CudaState& s);
bool lora_dropout_weight_grad(float* dA, const float* du, const float* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask, CudaState& s);
// The device copy of a frozen weight (see to_device(FrozenWeight)): bf16 weights take the input rounded to
// bf16 and accumulate in fp32 (as the CPU's bf16 matmul); f32 weights run in fp32; NF4 weights are
// dequantised on the device, one weight at a time, into the context's workspace.
void linear_forward(float* out, const float* inp, const FrozenWeight& w, int64_t M, CudaState& s);
void linear_backward_input(float* dinp, const float* dout, const FrozenWeight& w, int64_t M, CudaState& s);
// w[N, K] dequantised from its device NF4 copy into out (bf16 bits when bf16, else fp32).
void nf4_dequantize(void* out, bool bf16, const DeviceNf4& w, CudaState& s);

// --- element-wise, norms, rope, loss, optimizer (kernels/cuda/*.cu)
void embedding_forward(float* out, const int32_t* ids, const core::Tensor& table, int64_t M, CudaState& s);
void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t M, int64_t V, int64_t C,
                        CudaState& s);
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t M, int64_t C,
                     double eps, CudaState& s);
void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t M, int64_t C, CudaState& s);
void rope_forward(float* x, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                  CudaState& s);
void rope_backward(float* dx, const float* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                   CudaState& s);
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, CudaState& s);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n,
                     CudaState& s);
void add(float* out, const float* a, const float* b, int64_t n, CudaState& s);
void fill_zero(void* x, size_t bytes, CudaState& s);
void scale(float* x, int64_t n, float factor, CudaState& s);
void dropout_apply(float* out, const float* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate,
                   CudaState& s);
// sums[0] += summed loss, sums[1] += counted rows (doubles in device memory); a target outside [0,V) other
// than -100 sets sums[2] to 1 + its row (the caller reports it after reading the sums).
void cross_entropy_accumulate(float* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                              double* sums, CudaState& s);
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, CudaState& s);
// synchronises (returns the value)
double sum_squares(const float* x, int64_t n, CudaState& s);

// --- attention (kernels/cuda/attention.cu): fp32 FMA kernels; with shape.bf16 and HD 64 or 128, tensor-core
// kernels with bf16 operands (q, k, v, dout, P, dS) and fp32 softmax and accumulation, as autocast runs it
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin, CudaState& s);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const AttentionShape& shape,
                        const int32_t* lengths, const int32_t* kv_begin, CudaState& s);
// Which kernels run shape.bf16 attention (cuDNN's fused attention where the build has it and it covers the case),
// and how many cuDNN attention graphs this process has executed.
std::string attention_library();
int64_t cudnn_attention_runs();
// --- a LoRA merge's update (kernels/cuda/merge.cu): the same bits as the CPU's (kernels.h)
void add_scaled_product(float* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, CudaState& s);
void add_scaled_product(double* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, CudaState& s);
// --- generation against a KV cache (kernels/cuda/decode.cu): fp32, any GQA ratio, HD <= 256, sliding window
void attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n, int64_t p0,
                      int64_t NH, int64_t NKV, int64_t HD, int64_t window, CudaState& s);

}  // namespace zerolora::kernels::cuda
