// LoRA's dropout fused into its products on the CPU (float): the masked copy of the [M, in] operand is made a
// block of rows (or of rows x columns) at a time into a per-thread buffer that stays in L2, and the block's
// product runs on it at once, instead of writing the whole [M, in] masked copy to memory and reading it back
// (three such passes per adapted projection and step: 4-11 MiB each at the TinyLlama shape, T 512).
// The blocks are fixed by the shape, not by the thread count, and each block's product runs on one thread
// (dnnl_sgemm inside a parallel region runs single-threaded), so the result does not depend on the threads.
// The products are kernels::gemm<float> (dnnl_sgemm) as in the unfused path; what changes is only where the sums
// over rows are cut (dA adds one block's partial at a time).
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/dropout_rows.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {

// Rows per block for a masked [rows, in] block of ~512 KiB (L2 is 1-2 MiB per core on the CPUs we run on).
int64_t block_rows(int64_t in) { return std::clamp<int64_t>(131072 / std::max<int64_t>(in, 1), 8, 64); }

constexpr int64_t kCols = 256;     // dA: columns per task (each task owns its columns of dA: no reduction)
constexpr int64_t kColRows = 512;  // dA: rows per masked [rows, kCols] block (512 KiB)

// Below 2 MiB of fp32 operand the masked copy stays in cache anyway, and one product per call beats a product per
// block (a tiny model's step, e.g. stories260K, was ~10 % slower fused): the unfused path runs there.
constexpr int64_t kMinFusedElements = int64_t(1) << 19;
bool worth_fusing(int64_t M, int64_t in, int64_t r) {
  return lora_fused_enabled() && M > 0 && in > 0 && r > 0 && M * in >= kMinFusedElements;
}
float* thread_buffer(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

bool lora_fused_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("ZEROLORA_LORA_FUSED");
    if (!v || !*v) return true;
    const std::string s(v);
    core::check(s == "0" || s == "1", "ZEROLORA_LORA_FUSED", "unknown value '" + s + "'",
                "set 1 (the LoRA dropout fused into its products, the default) or 0 (dropout_apply + GEMMs)");
    return s == "1";
  }();
  return on;
}

namespace {

// Runs block(m0, rows, h) over the fixed row blocks of an [M, in] operand, in parallel, h a per-thread buffer of
// block_rows(in) x in floats.
template <typename Block>
void for_row_blocks(int64_t M, int64_t in, Block&& block) {
  const int64_t R = block_rows(in), blocks = (M + R - 1) / R;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) block(b * R, std::min(R, M - b * R), thread_buffer(size_t(R * in)));
}

bool fused_forward(float* u, const float* x, const float* A, int64_t M, int64_t in, int64_t r,
                   const DropoutMask& mask) {
  if (!worth_fusing(M, in, r)) return false;
  for_row_blocks(M, in, [&](int64_t m0, int64_t rows, float* h) {
    for (int64_t i = 0; i < rows; ++i)
      cpu::dropout_run<float>(h + i * in, x + (m0 + i) * in, uint64_t((m0 + i) * in), in, mask, false);
    gemm<float>(false, true, rows, r, in, 1.f, h, in, A, in, 0.f, u + m0 * r, r);  // u rows = h A^T
  });
  return true;
}

bool fused_backward_input(float* dx, const float* du, const float* A, int64_t M, int64_t in, int64_t r,
                          const DropoutMask& mask) {
  if (!worth_fusing(M, in, r)) return false;
  for_row_blocks(M, in, [&](int64_t m0, int64_t rows, float* h) {
    gemm<float>(false, false, rows, in, r, 1.f, du + m0 * r, r, A, in, 0.f, h, in);  // h = du A
    for (int64_t i = 0; i < rows; ++i)
      cpu::dropout_run<float>(dx + (m0 + i) * in, h + i * in, uint64_t((m0 + i) * in), in, mask, true);
  });
  return true;
}

bool fused_weight_grad(float* dA, const float* du, const float* x, int64_t M, int64_t in, int64_t r,
                       const DropoutMask& mask) {
  if (!worth_fusing(M, in, r)) return false;
  const int64_t tasks = (in + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t c0 = t * kCols, cols = std::min(kCols, in - c0);
    float* h = thread_buffer(size_t(kColRows * kCols));
    for (int64_t m0 = 0; m0 < M; m0 += kColRows) {  // in row order: each dA element sums its blocks in order
      const int64_t rows = std::min(kColRows, M - m0);
      for (int64_t i = 0; i < rows; ++i)
        cpu::dropout_run<float>(h + i * kCols, x + (m0 + i) * in + c0, uint64_t((m0 + i) * in + c0), cols, mask,
                                false);
      // dA[:, c0 : c0 + cols] += du[m0 : m0 + rows]^T h
      gemm<float>(true, false, r, cols, rows, 1.f, du + m0 * r, r, h, kCols, 1.f, dA + c0, in);
    }
  }
  return true;
}

}  // namespace

// float: the fused products above; double: false (the finite-difference checks keep the unfused reference path)
template <typename S>
bool lora_dropout_forward(S* u, const S* x, const S* A, int64_t M, int64_t in, int64_t r, const DropoutMask& mask) {
  if constexpr (std::is_same_v<S, float>) return fused_forward(u, x, A, M, in, r, mask);
  return false;
}
template <typename S>
bool lora_dropout_backward_input(S* dx, const S* du, const S* A, int64_t M, int64_t in, int64_t r,
                                 const DropoutMask& mask) {
  if constexpr (std::is_same_v<S, float>) return fused_backward_input(dx, du, A, M, in, r, mask);
  return false;
}
template <typename S>
bool lora_dropout_weight_grad(S* dA, const S* du, const S* x, int64_t M, int64_t in, int64_t r,
                              const DropoutMask& mask) {
  if constexpr (std::is_same_v<S, float>) return fused_weight_grad(dA, du, x, M, in, r, mask);
  return false;
}

template bool lora_dropout_forward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                          const DropoutMask&);
template bool lora_dropout_forward<double>(double*, const double*, const double*, int64_t, int64_t, int64_t,
                                           const DropoutMask&);
template bool lora_dropout_backward_input<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                                 const DropoutMask&);
template bool lora_dropout_backward_input<double>(double*, const double*, const double*, int64_t, int64_t, int64_t,
                                                  const DropoutMask&);
template bool lora_dropout_weight_grad<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                              const DropoutMask&);
template bool lora_dropout_weight_grad<double>(double*, const double*, const double*, int64_t, int64_t, int64_t,
                                               const DropoutMask&);

}  // namespace zerolora::kernels
