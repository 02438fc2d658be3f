// The CUDA backend's own kernels (kernels/cuda: element-wise, RMSNorm, RoPE, cross-entropy, AdamW,
// sum_squares, NF4 dequantisation) against the CPU kernels on the same inputs, through the ctx entry points.
// Bit-exact where both sides do the same fp32 operations with no sum (gathers, add, scale, the dropout mask,
// NF4); elsewhere within a bound stated next to each tolerance. Every test skips where no GPU is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/context.h"
#include "kernels/cuda_backend.h"
#include "kernels/dropout.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

namespace {

constexpr double kUlp = 1.0 / (1 << 23);  // fp32 machine epsilon (one ulp at 1.0)

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA kernel test skipped";
    gpu_ = std::make_unique<CudaContext>(0);
  }
  const Context& ctx() const { return gpu_->ctx(); }

  template <typename T>
  DeviceArray<T> upload(const std::vector<T>& h) {
    DeviceArray<T> d(int64_t(h.size()), ctx());
    copy_to_device(d.data(), h.data(), h.size() * sizeof(T), ctx());
    return d;
  }
  template <typename T>
  std::vector<T> download(const DeviceArray<T>& d) {
    std::vector<T> h(size_t(d.size()));
    copy_to_host(h.data(), d.data(), h.size() * sizeof(T), ctx());
    return h;
  }

 private:
  std::unique_ptr<CudaContext> gpu_;
};

std::vector<float> randn_f(size_t n, uint64_t seed, double scale = 1.0) { return to_float(randn(n, seed, scale)); }

std::vector<int32_t> random_ids(size_t n, int32_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, hi - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

template <typename T>
void expect_same_bytes(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      ADD_FAILURE() << what << "[" << i << "]: got " << double(got[i]) << ", want " << double(want[i]);
      return;
    }
}

}  // namespace

// ---- embedding: a gather (bf16 widened exactly), so bit for bit ----------------------------------------

TEST_F(CudaKernels, EmbeddingF32AndBf16TablesBitExact) {
  const int64_t V = 1001, C = 67, M = 13;
  const std::vector<float> values = randn_f(size_t(V * C), 1);
  core::Tensor f32 = core::Tensor::empty(core::DType::F32, {V, C});
  std::memcpy(f32.raw(), values.data(), values.size() * sizeof(float));
  core::Tensor bf16 = core::Tensor::empty(core::DType::BF16, {V, C});
  for (size_t i = 0; i < values.size(); ++i) bf16.bits16()[i] = core::f32_to_bf16(values[i]);
  std::vector<int32_t> ids = random_ids(size_t(M), int32_t(V), 2);
  ids[0] = 0, ids[1] = int32_t(V - 1);
  const auto d_ids = upload(ids);
  for (const core::Tensor* table : {&f32, &bf16}) {
    std::vector<float> want(static_cast<size_t>(M * C));
    embedding_forward<float>(want.data(), ids.data(), *table, M);
    const core::Tensor d_table = to_device(*table, ctx());
    DeviceArray<float> d_out(M * C, ctx());
    embedding_forward<float>(d_out.data(), d_ids.data(), d_table, M, ctx());
    expect_same_bytes(download(d_out), want, core::dtype_name(table->dtype()));
  }
}

// ---- RMSNorm ---------------------------------------------------------------------------------------------

TEST_F(CudaKernels, RmsNormForwardBackwardMatchCpu) {
  const double eps = 1e-5;
  for (const auto& [M, C] : {std::pair<int64_t, int64_t>{13, 67}, {5, 4099}}) {
    SCOPED_TRACE("M " + std::to_string(M) + ", C " + std::to_string(C));
    const auto x = randn_f(size_t(M * C), 10), w = randn_f(size_t(C), 11), dy = randn_f(size_t(M * C), 12),
               dx0 = randn_f(size_t(M * C), 13);
    std::vector<float> out(static_cast<size_t>(M * C)), rstd(static_cast<size_t>(M)), dx = dx0;
    rmsnorm_forward<float>(out.data(), rstd.data(), x.data(), w.data(), M, C, eps);
    rmsnorm_backward<float>(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), M, C);

    auto d_x = upload(x), d_w = upload(w), d_dy = upload(dy), d_dx = upload(dx0);
    DeviceArray<float> d_out(M * C, ctx()), d_rstd(M, ctx());
    rmsnorm_forward<float>(d_out.data(), d_rstd.data(), d_x.data(), d_w.data(), M, C, eps, ctx());
    rmsnorm_backward<float>(d_dx.data(), d_dy.data(), d_x.data(), d_w.data(), d_rstd.data(), M, C, ctx());
    // rstd: the same double (sums of exact squares, differing in order only, ~1e-15 relative) rounded to fp32:
    // at most 1 ulp apart. out = (x r) w: two fp32 products on each side, plus that ulp of r: <= 4 ulp.
    EXPECT_LE(rel_err(download(d_rstd), rstd), 1 * kUlp);
    EXPECT_LE(rel_err(download(d_out), out), 4 * kUlp);
    // dx += a w dy - b x: the same five fp32 operations on each side, each within 0.5 ulp of its result, either
    // compiler free to fuse a product into an FMA, and b (a double dot product, order only, rounded to fp32)
    // up to 1 ulp apart: <= 6 ulp of |dx| + |a w dy| + |b x|, which for these draws is within ~2x the
    // buffer's scale: 16 ulp of it.
    EXPECT_LE(rel_err(download(d_dx), dx), 16 * kUlp);
  }
}

// ---- RoPE ------------------------------------------------------------------------------------------------

TEST_F(CudaKernels, RopeForwardBackwardMatchCpu) {
  const int64_t M = 13, H = 3, HD = 10, max_pos = 64;  // HD / 2 = 5: an odd half
  std::vector<double> inv_freq(size_t(HD / 2));
  for (int64_t i = 0; i < HD / 2; ++i) inv_freq[size_t(i)] = std::pow(10000.0, -2.0 * double(i) / double(HD));
  std::vector<float> table(static_cast<size_t>(max_pos * HD));
  rope_table<float>(table.data(), inv_freq.data(), max_pos, HD);
  const std::vector<int32_t> pos = random_ids(size_t(M), int32_t(max_pos), 20);
  const auto x = randn_f(size_t(M * H * HD), 21);
  auto d_table = upload(table);
  auto d_pos = upload(pos);
  for (const bool forward : {true, false}) {
    std::vector<float> want = x;
    auto d_x = upload(x);
    if (forward) {
      rope_forward<float>(want.data(), table.data(), pos.data(), M, H, HD);
      rope_forward<float>(d_x.data(), d_table.data(), d_pos.data(), M, H, HD, ctx());
    } else {
      rope_backward<float>(want.data(), table.data(), pos.data(), M, H, HD);
      rope_backward<float>(d_x.data(), d_table.data(), d_pos.data(), M, H, HD, ctx());
    }
    // each output is x0 c -+ x1 s with |c|, |s| <= 1 (the same table): each side rounds two products and a
    // sum (or fuses one product into an FMA), within 0.5 ulp * (|x0 c| + |x1 s| + |result|) <= 1.8 ulp of
    // max(|x0|, |x1|) of the exact value: <= 4 ulp apart, bounded by the buffer's scale
    EXPECT_LE(rel_err(download(d_x), want), 4 * kUlp) << (forward ? "forward" : "backward");
  }
}

// ---- SwiGLU ----------------------------------------------------------------------------------------------

TEST_F(CudaKernels, SwiGluForwardBackwardMatchCpu) {
  const int64_t n = 1001;
  const auto g = randn_f(size_t(n), 30, 3.0), u = randn_f(size_t(n), 31), dout = randn_f(size_t(n), 32);
  std::vector<float> out(static_cast<size_t>(n)), dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  swiglu_forward<float>(out.data(), g.data(), u.data(), n);
  swiglu_backward<float>(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
  auto d_g = upload(g), d_u = upload(u), d_dout = upload(dout);
  DeviceArray<float> d_out(n, ctx()), d_dg(n, ctx()), d_du(n, ctx());
  swiglu_forward<float>(d_out.data(), d_g.data(), d_u.data(), n, ctx());
  swiglu_backward<float>(d_dg.data(), d_du.data(), d_dout.data(), d_g.data(), d_u.data(), n, ctx());
  // expf (<= 2 ulp) vs the CPU's Cephes exp (<= 2 ulp, test_loss_optim bounds it by 4): sigmoid within ~6 ulp,
  // then <= 4 fp32 roundings; in dgate the factor 1 + g (1 - sig) cancels near g = -1.28, where its error is
  // ulps of max(1, |g|) <= 16 (|g| < 16 for these draws) times |dout up sig|: <= 64 ulp of the buffer's scale.
  EXPECT_LE(rel_err(download(d_out), out), 16 * kUlp);
  EXPECT_LE(rel_err(download(d_du), du), 16 * kUlp);
  EXPECT_LE(rel_err(download(d_dg), dg), 64 * kUlp);
  // in place (d gate over gate, d up over up, as the model's backward runs it): the same bits as out of place
  swiglu_backward<float>(d_g.data(), d_u.data(), d_dout.data(), d_g.data(), d_u.data(), n, ctx());
  EXPECT_EQ(download(d_g), download(d_dg));
  EXPECT_EQ(download(d_u), download(d_du));
}

// ---- add, scale, fill_zero: one fp32 operation per element, bit for bit ------------------------------------

// A LoRA merge's update W += scale B A: both sides form each entry in double with fma in k order and round once,
// so the bits agree (float and double W; r 16 and an odd r).
TEST_F(CudaKernels, MergeUpdateBitExact) {
  const int64_t rows = 37, cols = 301;
  for (const int64_t r : {int64_t(16), int64_t(5)}) {
    const std::vector<float> L = randn_f(size_t(rows * r), 11 + uint64_t(r), 0.3), R = randn_f(size_t(r * cols), 12, 0.3);
    const std::vector<float> W0 = randn_f(size_t(rows * cols), 13, 1.0);
    std::vector<float> want = W0;
    add_scaled_product<float>(want.data(), L.data(), R.data(), rows, cols, r, 1.7);
    auto dW = upload(W0), dL = upload(L), dR = upload(R);
    add_scaled_product<float>(dW.data(), dL.data(), dR.data(), rows, cols, r, 1.7, ctx());
    const std::vector<float> got = download(dW);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << "float, r " << r;
    EXPECT_NE(0, std::memcmp(got.data(), W0.data(), got.size() * sizeof(float))) << "nothing was added";
    std::vector<double> W0d(W0.begin(), W0.end()), wantd = W0d;
    add_scaled_product<double>(wantd.data(), L.data(), R.data(), rows, cols, r, 1.7);
    auto dWd = upload(W0d);
    add_scaled_product<double>(dWd.data(), dL.data(), dR.data(), rows, cols, r, 1.7, ctx());
    const std::vector<double> gotd = download(dWd);
    EXPECT_EQ(0, std::memcmp(gotd.data(), wantd.data(), gotd.size() * sizeof(double))) << "double, r " << r;
  }
}

TEST_F(CudaKernels, AddScaleFillZeroBitExact) {
  const int64_t n = 1001;
  const auto a = randn_f(size_t(n), 40), b = randn_f(size_t(n), 41);
  std::vector<float> sum(static_cast<size_t>(n));
  add<float>(sum.data(), a.data(), b.data(), n);
  auto d_a = upload(a), d_b = upload(b);
  DeviceArray<float> d_sum(n, ctx());
  add<float>(d_sum.data(), d_a.data(), d_b.data(), n, ctx());
  expect_same_bytes(download(d_sum), sum, "add");
  add<float>(d_a.data(), d_a.data(), d_b.data(), n, ctx());  // out aliasing an input
  expect_same_bytes(download(d_a), sum, "add in place");

  std::vector<float> scaled = sum;
  scale(scaled.data(), n, 0.37, host());
  scale(d_sum.data(), n, 0.37, ctx());
  expect_same_bytes(download(d_sum), scaled, "scale");

  fill_zero<float>(d_sum.data(), n, ctx());
  expect_same_bytes(download(d_sum), std::vector<float>(size_t(n), 0.0f), "fill_zero");
}

// ---- dropout: the same counter-based mask, bit for bit -------------------------------------------------------

TEST_F(CudaKernels, DropoutMaskBitExact) {
  const int64_t M = 13, in = 67;
  const auto x = randn_f(size_t(M * in), 50), o0 = randn_f(size_t(M * in), 51);
  auto d_x = upload(x);
  for (const double p : {0.1, 0.5, 0.0}) {
    SCOPED_TRACE("p " + std::to_string(p));
    const DropoutMask mask(1234, 7, p);
    std::vector<float> want(static_cast<size_t>(M * in));
    dropout_apply<float>(want.data(), x.data(), M, in, mask, false);
    DeviceArray<float> d_out(M * in, ctx());
    dropout_apply<float>(d_out.data(), d_x.data(), M, in, mask, false, ctx());
    expect_same_bytes(download(d_out), want, "dropout");  // (keep * scale) * x on both sides, -0 included

    std::vector<float> acc = o0;
    dropout_apply<float>(acc.data(), x.data(), M, in, mask, true);
    auto d_acc = upload(o0);
    dropout_apply<float>(d_acc.data(), d_x.data(), M, in, mask, true, ctx());
    // out + v: GCC may fuse (keep * scale) * x + out into one FMA, the kernel rounds the product first; the
    // two differ by at most one rounding of the product and one of the sum. A mask difference would be off
    // by a whole |x| / (1 - p).
    const auto got = download(d_acc);
    for (size_t i = 0; i < got.size(); ++i) {
      const double v = double(x[i]) * mask.keep_scale;
      ASSERT_LE(std::abs(double(got[i]) - double(acc[i])), 2 * kUlp * (std::abs(double(o0[i])) + std::abs(v)))
          << "element " << i;
    }
  }
}

// ---- cross-entropy ----------------------------------------------------------------------------------------

TEST_F(CudaKernels, CrossEntropyMatchesCpuWithIgnoredRows) {
  for (const auto& [M, V] : {std::pair<int64_t, int64_t>{13, 1001}, {7, 1000}, {2, 128256}}) {
    SCOPED_TRACE("M " + std::to_string(M) + ", V " + std::to_string(V));
    const auto logits = randn_f(size_t(M * V), 60, 2.0);
    std::vector<int32_t> targets = random_ids(size_t(M), int32_t(V), 61);
    targets[1] = -100;
    if (M > 3) targets[3] = -100;
    int64_t want_count = 0;
    std::vector<float> want = logits;
    const double grad_scale = 1.0 / 9.0;
    const double want_loss = cross_entropy_forward_backward<float>(want.data(), targets.data(), M, V, grad_scale,
                                                                   &want_count);
    auto d_logits = upload(logits);
    auto d_targets = upload(targets);
    auto d_sums = upload(std::vector<double>{0.0, 0.0, 0.0});
    cross_entropy_accumulate<float>(d_logits.data(), d_targets.data(), M, V, grad_scale, d_sums.data(), ctx());
    const auto sums = download(d_sums);
    const auto grad = download(d_logits);
    EXPECT_EQ(sums[1], double(want_count));
    EXPECT_EQ(sums[2], 0.0);
    // per row, log(sum exp) with each exp within 2.4e-7 relative of exp(x - mx) on either side (expf: 2 ulp;
    // the CPU's Cephes exp as test_loss_optim bounds it): <= 5 ulp relative in the double sum, so <= 5 ulp
    // absolute in the row's loss (mx and x[target] are the same fp32 values on both sides)
    EXPECT_LE(std::abs(sums[0] - want_loss), 5 * kUlp * double(want_count)) << sums[0] << " vs " << want_loss;
    // gradient grad_scale * e * f: e within 5 ulp of the CPU's, f = grad_scale / sum within 6 ulp, then the
    // product's and the target's subtraction's roundings on each side: <= 13 ulp of grad_scale; the
    // buffer's scale is at least grad_scale (1 - p_target) ~ grad_scale for these random logits
    EXPECT_LE(rel_err(grad, want), 16 * kUlp);
    for (int64_t m = 0; m < M; ++m) {
      if (targets[size_t(m)] != -100) continue;
      for (int64_t j = 0; j < V; ++j) ASSERT_EQ(grad[size_t(m * V + j)], 0.0f) << "ignored row " << m;
    }
  }
}

TEST_F(CudaKernels, CrossEntropyEvaluationAccumulatesAndLeavesLogits) {
  const int64_t M = 13, V = 1001;
  const auto logits = randn_f(size_t(M * V), 70, 2.0);
  std::vector<int32_t> targets = random_ids(size_t(M), int32_t(V), 71);
  targets[4] = -100;
  int64_t count = 0;
  std::vector<float> scratch = logits;
  const double want_loss = cross_entropy_forward_backward<float>(scratch.data(), targets.data(), M, V, 0.0, &count);
  auto d_logits = upload(logits);
  auto d_targets = upload(targets);
  auto d_sums = upload(std::vector<double>{0.5, 2.0, 0.0});  // accumulates onto what is there
  cross_entropy_accumulate<float>(d_logits.data(), d_targets.data(), M, V, 0.0, d_sums.data(), ctx());
  cross_entropy_accumulate<float>(d_logits.data(), d_targets.data(), M, V, 0.0, d_sums.data(), ctx());
  const auto sums = download(d_sums);
  expect_same_bytes(download(d_logits), logits, "evaluation logits");
  EXPECT_EQ(sums[1], 2.0 + 2.0 * double(count));
  EXPECT_LE(std::abs(sums[0] - (0.5 + 2.0 * want_loss)), 2 * 5 * kUlp * double(count));  // as above, twice
  EXPECT_EQ(sums[2], 0.0);
}

TEST_F(CudaKernels, CrossEntropyReportsATargetOutsideTheVocabulary) {
  const int64_t M = 13, V = 1001;
  const auto logits = randn_f(size_t(M * V), 80);
  std::vector<int32_t> targets = random_ids(size_t(M), int32_t(V), 81);
  targets[5] = int32_t(V);  // the one bad row: sums[2] = 1 + 5
  auto d_logits = upload(logits);
  auto d_targets = upload(targets);
  auto d_sums = upload(std::vector<double>{0.0, 0.0, 0.0});
  cross_entropy_accumulate<float>(d_logits.data(), d_targets.data(), M, V, 1.0, d_sums.data(), ctx());
  const auto sums = download(d_sums);
  EXPECT_EQ(sums[2], 6.0);
  EXPECT_EQ(sums[1], double(M - 1));
}

// ---- AdamW and sum_squares ---------------------------------------------------------------------------------

TEST_F(CudaKernels, AdamWTwoStepsMatchCpu) {
  const int64_t n = 1001;
  std::vector<float> p = randn_f(size_t(n), 90), m(size_t(n), 0.0f), v(size_t(n), 0.0f);
  auto d_p = upload(p), d_m = upload(m), d_v = upload(v);
  for (int64_t step = 1; step <= 2; ++step) {
    const auto g = randn_f(size_t(n), 90 + uint64_t(step), 0.1);
    auto d_g = upload(g);
    adamw_step(p.data(), g.data(), m.data(), v.data(), n, 1e-3, 0.9, 0.999, 1e-8, 0.01, step);
    adamw_step(d_p.data(), d_g.data(), d_m.data(), d_v.data(), n, 1e-3, 0.9, 0.999, 1e-8, 0.01, step, ctx());
  }
  // the same fp32 operations in the same order with the same fp32 scalars; either compiler may fuse a product
  // and a sum into one FMA (1 ulp per operation, ~3 per update, twice): <= 8 ulp of each buffer's scale
  EXPECT_LE(rel_err(download(d_m), m), 8 * kUlp);
  EXPECT_LE(rel_err(download(d_v), v), 8 * kUlp);
  EXPECT_LE(rel_err(download(d_p), p), 8 * kUlp);
}

TEST_F(CudaKernels, SumSquaresMatchesCpu) {
  for (const int64_t n : {int64_t(1), int64_t(1001), int64_t(1000003)}) {
    const auto x = randn_f(size_t(n), 100 + uint64_t(n));
    auto d_x = upload(x);
    const double want = sum_squares(x.data(), n);
    const double got = sum_squares(d_x.data(), n, ctx());
    // double sums of the same exact squares in another order: a recursive sum of n positive terms is within
    // n * 2^-53 relative of the exact value, so the two are within 2 n 2^-53 of each other
    EXPECT_LE(std::abs(got - want), 2.0 * double(n) * std::ldexp(1.0, -53) * want) << "n " << n;
    EXPECT_EQ(sum_squares(d_x.data(), n, ctx()), got) << "not the same from run to run";
  }
  EXPECT_EQ(sum_squares(static_cast<const float*>(nullptr), 0, ctx()), 0.0);
}

// ---- NF4 dequantisation: bit for bit the CPU's, fp32 and bf16 ------------------------------------------------

TEST_F(CudaKernels, Nf4DequantizeBitExact) {
  // odd N * K (a padded last nibble), a partial last 64-block, > 256 blocks (several absmax2), a zero block
  for (const auto& [N, K] : {std::pair<int64_t, int64_t>{37, 51}, {301, 129}}) {
    for (const bool double_quant : {true, false}) {
      SCOPED_TRACE("N " + std::to_string(N) + ", K " + std::to_string(K) + (double_quant ? ", double quant" : ""));
      std::vector<float> w = randn_f(size_t(N * K), 110 + uint64_t(N), 0.02);
      std::fill(w.begin() + 64, w.begin() + 128, 0.0f);  // block 1 all zero (absmax 0)
      auto q = std::make_shared<Nf4Weight>(nf4_quantize(w.data(), N, K, double_quant));
      std::vector<float> want_f32(static_cast<size_t>(N * K));
      nf4_dequantize_rows(*q, 0, N, want_f32.data());
      std::vector<uint16_t> want_bf16(static_cast<size_t>(N * K));
      nf4_dequantize_rows_bf16(*q, 0, N, want_bf16.data());

      const FrozenWeight dev = to_device(FrozenWeight::make_nf4(q), ctx());
      ASSERT_TRUE(dev.nf4_device);
      DeviceArray<float> d_f32(N * K, ctx());
      DeviceArray<uint16_t> d_bf16(N * K, ctx());
      cuda::nf4_dequantize(d_f32.data(), false, *dev.nf4_device, *ctx().cuda);
      cuda::nf4_dequantize(d_bf16.data(), true, *dev.nf4_device, *ctx().cuda);
      expect_same_bytes(download(d_f32), want_f32, "fp32");
      expect_same_bytes(download(d_bf16), want_bf16, "bf16");
    }
  }
}
