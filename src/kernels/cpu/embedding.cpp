// embedding_forward: out[M,C] = table[ids[m], :] for F32/F64/BF16 tables; embedding_backward: its scatter-add.
#include <string>
#include <type_traits>

#include "core/error.h"
#include "kernels/cpu/common.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

template <typename S>
void embedding_forward(S* out, const int32_t* ids, const core::Tensor& table, int64_t M) {
  core::check(table.ndim() == 2, "embedding",
              "expected a 2-D table [vocab, hidden], got shape " + core::shape_str(table.shape()));
  const int64_t V = table.dim(0), C = table.dim(1);
  const core::DType dt = table.dtype();
  core::check(dt == core::DType::F32 || dt == core::DType::F64 || dt == core::DType::BF16, "embedding",
              std::string("unsupported table dtype ") + core::dtype_name(dt), "convert the table to F32 or BF16");
  for (int64_t m = 0; m < M; ++m)
    core::check(ids[m] >= 0 && ids[m] < V, "embedding",
                "token id " + std::to_string(ids[m]) + " at position " + std::to_string(m) +
                    " is outside the vocabulary [0, " + std::to_string(V) + ")",
                "check that the tokenizer matches the model (vocab_size " + std::to_string(V) + ")");
#pragma omp parallel for schedule(static) if (M * C > 65536)
  for (int64_t m = 0; m < M; ++m) {
    S* o = out + m * C;
    const int64_t row = int64_t(ids[m]) * C;
    if (dt == core::DType::BF16) {
      const uint16_t* t = table.bits16() + row;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = S(cpu::bf16_bits_to_f32(t[c]));
    } else if (dt == core::DType::F32) {
      const float* t = static_cast<const float*>(table.raw()) + row;
      for (int64_t c = 0; c < C; ++c) o[c] = S(t[c]);
    } else {
      const double* t = static_cast<const double*>(table.raw()) + row;
      for (int64_t c = 0; c < C; ++c) o[c] = S(t[c]);
    }
  }
}

template <typename S>
void embedding_backward(S* dtable, const int32_t* ids, const S* dout, int64_t M, int64_t V, int64_t C) {
  for (int64_t m = 0; m < M; ++m)
    core::check(ids[m] >= 0 && ids[m] < V, "embedding_backward",
                "token id " + std::to_string(ids[m]) + " at position " + std::to_string(m) +
                    " is outside the vocabulary [0, " + std::to_string(V) + ")",
                "check that the tokenizer matches the model (vocab_size " + std::to_string(V) + ")");
  // columns split across threads, rows in order within a column: the same sums for any thread count
#pragma omp parallel for schedule(static) if (M * C > 65536)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t m = 0; m < M; ++m) dtable[int64_t(ids[m]) * C + c] += dout[m * C + c];
}

template void embedding_backward<float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t);
template void embedding_backward<double>(double*, const int32_t*, const double*, int64_t, int64_t, int64_t);
template void embedding_forward<float>(float*, const int32_t*, const core::Tensor&, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const core::Tensor&, int64_t);

}  // namespace zerolora::kernels
