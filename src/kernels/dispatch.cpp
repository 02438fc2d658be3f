// The context-taking entry points of kernels.h: each runs its op on the context's device, the CPU
// implementation (kernels/cpu) for the host context, the CUDA backend (kernels/cuda_backend.h) for a CUDA
// context.
#include <cstring>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "kernels/cuda_backend.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {
[[noreturn]] void double_on_cuda(const char* op) {
  throw core::Error(op, "double precision runs on the CPU backend only", "use the host context for double");
}
}  // namespace

// Runs the CUDA backend's `op` (float only) when ctx is a CUDA context, and returns.
#define ZL_ON_CUDA(ctx, op, ...)                            \
  if ((ctx).on_cuda()) {                                    \
    if constexpr (std::is_same_v<S, float>) {               \
      cuda::op(__VA_ARGS__, *(ctx).cuda);                   \
      return;                                               \
    } else {                                                \
      double_on_cuda(#op);                                  \
    }                                                       \
  }

template <typename S>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
          const S* B, int64_t ldb, S beta, S* C, int64_t ldc, const Context& ctx) {
  ZL_ON_CUDA(ctx, gemm, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
  gemm<S>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename S>
void linear_forward(S* out, const S* inp, const FrozenWeight& w, int64_t M, const Context& ctx) {
  ZL_ON_CUDA(ctx, linear_forward, out, inp, w, M)
  linear_forward<S>(out, inp, w, M);
}

template <typename S>
void linear_backward_input(S* dinp, const S* dout, const FrozenWeight& w, int64_t M, const Context& ctx) {
  ZL_ON_CUDA(ctx, linear_backward_input, dinp, dout, w, M)
  linear_backward_input<S>(dinp, dout, w, M);
}

template <typename S>
void embedding_forward(S* out, const int32_t* ids, const core::Tensor& table, int64_t M, const Context& ctx) {
  ZL_ON_CUDA(ctx, embedding_forward, out, ids, table, M)
  embedding_forward<S>(out, ids, table, M);
}

template <typename S>
void embedding_backward(S* dtable, const int32_t* ids, const S* dout, int64_t M, int64_t V, int64_t C,
                        const Context& ctx) {
  ZL_ON_CUDA(ctx, embedding_backward, dtable, ids, dout, M, V, C)
  embedding_backward<S>(dtable, ids, dout, M, V, C);
}

template <typename S>
void rmsnorm_forward(S* out, S* rstd, const S* inp, const S* weight, int64_t M, int64_t C, double eps,
                     const Context& ctx) {
  ZL_ON_CUDA(ctx, rmsnorm_forward, out, rstd, inp, weight, M, C, eps)
  rmsnorm_forward<S>(out, rstd, inp, weight, M, C, eps);
}

template <typename S>
void rmsnorm_backward(S* dinp, const S* dout, const S* inp, const S* weight, const S* rstd, int64_t M, int64_t C,
                      const Context& ctx) {
  ZL_ON_CUDA(ctx, rmsnorm_backward, dinp, dout, inp, weight, rstd, M, C)
  rmsnorm_backward<S>(dinp, dout, inp, weight, rstd, M, C);
}

template <typename S>
void rope_forward(S* x, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                  const Context& ctx) {
  ZL_ON_CUDA(ctx, rope_forward, x, cos_sin, positions, M, H, HD)
  rope_forward<S>(x, cos_sin, positions, M, H, HD);
}

template <typename S>
void rope_backward(S* dx, const S* cos_sin, const int32_t* positions, int64_t M, int64_t H, int64_t HD,
                   const Context& ctx) {
  ZL_ON_CUDA(ctx, rope_backward, dx, cos_sin, positions, M, H, HD)
  rope_backward<S>(dx, cos_sin, positions, M, H, HD);
}

template <typename S>
void attention_forward(S* out, S* lse, const S* q, const S* k, const S* v, const AttentionShape& shape,
                       const int32_t* lengths, const int32_t* kv_begin, const Context& ctx) {
  ZL_ON_CUDA(ctx, attention_forward, out, lse, q, k, v, shape, lengths, kv_begin)
  attention_forward<S>(out, lse, q, k, v, shape, lengths, kv_begin);
}

template <typename S>
void attention_backward(S* dq, S* dk, S* dv, const S* dout, const S* q, const S* k, const S* v, const S* out,
                        const S* lse, const AttentionShape& shape, const int32_t* lengths, const int32_t* kv_begin,
                        const Context& ctx) {
  ZL_ON_CUDA(ctx, attention_backward, dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin)
  attention_backward<S>(dq, dk, dv, dout, q, k, v, out, lse, shape, lengths, kv_begin);
}

template <typename S>
void attention_decode(S* out, const S* q, const S* k_cache, const S* v_cache, int64_t n, int64_t p0, int64_t NH,
                      int64_t NKV, int64_t HD, int64_t window, const Context& ctx) {
  ZL_ON_CUDA(ctx, attention_decode, out, q, k_cache, v_cache, n, p0, NH, NKV, HD, window)
  attention_decode<S>(out, q, k_cache, v_cache, n, p0, NH, NKV, HD, window);
}

template <typename S>
void swiglu_forward(S* out, const S* gate, const S* up, int64_t n, const Context& ctx) {
  ZL_ON_CUDA(ctx, swiglu_forward, out, gate, up, n)
  swiglu_forward<S>(out, gate, up, n);
}

template <typename S>
void swiglu_backward(S* dgate, S* dup, const S* dout, const S* gate, const S* up, int64_t n, const Context& ctx) {
  ZL_ON_CUDA(ctx, swiglu_backward, dgate, dup, dout, gate, up, n)
  swiglu_backward<S>(dgate, dup, dout, gate, up, n);
}

template <typename S>
void add(S* out, const S* a, const S* b, int64_t n, const Context& ctx) {
  ZL_ON_CUDA(ctx, add, out, a, b, n)
  add<S>(out, a, b, n);
}

template <typename S>
void fill_zero(S* x, int64_t n, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::fill_zero(x, size_t(n) * sizeof(S), *ctx.cuda);
  if (n > 0) std::memset(x, 0, size_t(n) * sizeof(S));
}

template <typename S>
void dropout_apply(S* out, const S* x, int64_t M, int64_t in, const DropoutMask& mask, bool accumulate,
                   const Context& ctx) {
  ZL_ON_CUDA(ctx, dropout_apply, out, x, M, in, mask, accumulate)
  dropout_apply<S>(out, x, M, in, mask, accumulate);
}

template <typename S>
bool lora_dropout_forward(S* u, const S* x, const S* A, int64_t M, int64_t in, int64_t r, const DropoutMask& mask,
                          const Context& ctx) {
  if constexpr (std::is_same_v<S, float>)
    if (ctx.on_cuda()) return cuda::lora_dropout_forward(u, x, A, M, in, r, mask, *ctx.cuda);
  return lora_dropout_forward<S>(u, x, A, M, in, r, mask);
}

template <typename S>
bool lora_dropout_backward_input(S* dx, const S* du, const S* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask, const Context& ctx) {
  if constexpr (std::is_same_v<S, float>)
    if (ctx.on_cuda()) return cuda::lora_dropout_backward_input(dx, du, A, M, in, r, mask, *ctx.cuda);
  return lora_dropout_backward_input<S>(dx, du, A, M, in, r, mask);
}

template <typename S>
bool lora_dropout_weight_grad(S* dA, const S* du, const S* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask, const Context& ctx) {
  if constexpr (std::is_same_v<S, float>)
    if (ctx.on_cuda()) return cuda::lora_dropout_weight_grad(dA, du, x, M, in, r, mask, *ctx.cuda);
  return lora_dropout_weight_grad<S>(dA, du, x, M, in, r, mask);
}

template <typename S>
void add_scaled_product(S* W, const float* left, const float* right, int64_t rows, int64_t cols, int64_t r,
                        double scale, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::add_scaled_product(W, left, right, rows, cols, r, scale, *ctx.cuda);
  add_scaled_product<S>(W, left, right, rows, cols, r, scale);
}

template <typename S>
void cross_entropy_accumulate(S* logits, const int32_t* targets, int64_t M, int64_t V, double grad_scale,
                              double* sums, const Context& ctx) {
  ZL_ON_CUDA(ctx, cross_entropy_accumulate, logits, targets, M, V, grad_scale, sums)
  int64_t count = 0;
  sums[0] += cross_entropy_forward_backward<S>(logits, targets, M, V, grad_scale, &count);
  sums[1] += double(count);
}

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step, *ctx.cuda);
  adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}

double sum_squares(const float* x, int64_t n, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::sum_squares(x, n, *ctx.cuda);
  return sum_squares(x, n);
}

void scale(float* x, int64_t n, double factor, const Context& ctx) {
  if (ctx.on_cuda()) return cuda::scale(x, n, float(factor), *ctx.cuda);
  const float f = float(factor);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

#undef ZL_ON_CUDA

#define ZL_INSTANTIATE(S)                                                                                          \
  template void gemm<S>(bool, bool, int64_t, int64_t, int64_t, S, const S*, int64_t, const S*, int64_t, S, S*,    \
                        int64_t, const Context&);                                                                 \
  template void linear_forward<S>(S*, const S*, const FrozenWeight&, int64_t, const Context&);                    \
  template void linear_backward_input<S>(S*, const S*, const FrozenWeight&, int64_t, const Context&);             \
  template void embedding_forward<S>(S*, const int32_t*, const core::Tensor&, int64_t, const Context&);           \
  template void embedding_backward<S>(S*, const int32_t*, const S*, int64_t, int64_t, int64_t, const Context&);   \
  template void rmsnorm_forward<S>(S*, S*, const S*, const S*, int64_t, int64_t, double, const Context&);         \
  template void rmsnorm_backward<S>(S*, const S*, const S*, const S*, const S*, int64_t, int64_t, const Context&); \
  template void rope_forward<S>(S*, const S*, const int32_t*, int64_t, int64_t, int64_t, const Context&);         \
  template void rope_backward<S>(S*, const S*, const int32_t*, int64_t, int64_t, int64_t, const Context&);        \
  template void attention_forward<S>(S*, S*, const S*, const S*, const S*, const AttentionShape&, const int32_t*, \
                                     const int32_t*, const Context&);                                             \
  template void attention_backward<S>(S*, S*, S*, const S*, const S*, const S*, const S*, const S*, const S*,     \
                                      const AttentionShape&, const int32_t*, const int32_t*, const Context&);     \
  template void attention_decode<S>(S*, const S*, const S*, const S*, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                                    int64_t, const Context&);                                                     \
  template void swiglu_forward<S>(S*, const S*, const S*, int64_t, const Context&);                               \
  template void swiglu_backward<S>(S*, S*, const S*, const S*, const S*, int64_t, const Context&);                \
  template void add<S>(S*, const S*, const S*, int64_t, const Context&);                                          \
  template void fill_zero<S>(S*, int64_t, const Context&);                                                        \
  template void dropout_apply<S>(S*, const S*, int64_t, int64_t, const DropoutMask&, bool, const Context&);       \
  template bool lora_dropout_forward<S>(S*, const S*, const S*, int64_t, int64_t, int64_t, const DropoutMask&,       \
                                       const Context&);                                                            \
  template bool lora_dropout_backward_input<S>(S*, const S*, const S*, int64_t, int64_t, int64_t, const DropoutMask&, \
                                              const Context&);                                                     \
  template bool lora_dropout_weight_grad<S>(S*, const S*, const S*, int64_t, int64_t, int64_t, const DropoutMask&,   \
                                           const Context&);                                                        \
  template void add_scaled_product<S>(S*, const float*, const float*, int64_t, int64_t, int64_t, double,            \
                                      const Context&);                                                             \
  template void cross_entropy_accumulate<S>(S*, const int32_t*, int64_t, int64_t, double, double*, const Context&);
ZL_INSTANTIATE(float)
ZL_INSTANTIATE(double)
#undef ZL_INSTANTIATE

}  // namespace zerolora::kernels
