// The CUDA KV-cache attention (kernels/cuda/decode.cu) against the CPU kernel (kernels/cpu/attention_decode.cpp)
// through the ctx entry point: GQA ratios 1, 2 and 4, head sizes 64, 128, 256 and odd ones (37, 5: the scalar
// path), caches from 0 to 300 positions (several 32-key tiles per warp, a partial last tile), chunks of 1..33
// new tokens, sliding windows shorter and longer than the cache. Every test skips where no GPU is visible.
//
// Tolerance. The reference is the CPU kernel in double on the same float-exact inputs; the GPU computes in
// fp32 (dot products over HD, expf, an online softmax whose running sums are rescaled per 32-key tile, the
// warps merged at the end) and must lie within kFloatTol (1e-5, check.h) of it relative to the largest |value|
// of the output: with unit-normal inputs one fp32 rounding is 6e-8 relative, a score is an HD <= 256 term dot
// product (typically ~sqrt(HD) ulp of its magnitude ~16, i.e. ~1e-6 absolute after the 1/sqrt(HD) scale),
// exp turns the score's absolute error into a relative one, and the weighted sum over <= 301 values adds
// ~sqrt(T) ulp: errors of ~1e-6 of the output's scale are expected, 1e-5 bounds them with margin. The CPU float
// kernel (which sums in double and rounds once) is checked against the same bound.
// The decoder has no bf16 attention on either backend (with bf16 weights its attention stays fp32, as on the
// CPU): the bf16-weight case is covered at the model level (tests/model/test_cuda_model.cpp, CudaModelDecoder.*).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "check.h"
#include "core/error.h"
#include "kernels/context.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

namespace {

#define SKIP_WITHOUT_GPU() \
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA decode attention test skipped"

struct DecodeCase {
  int64_t n, p0, NH, NKV, HD, window;
};

std::string name(const DecodeCase& c) {
  return "n " + std::to_string(c.n) + " p0 " + std::to_string(c.p0) + " NH " + std::to_string(c.NH) + " NKV " +
         std::to_string(c.NKV) + " HD " + std::to_string(c.HD) + " window " + std::to_string(c.window);
}

struct Inputs {
  Vec q, k, v;
};

Inputs make_inputs(const DecodeCase& c, uint64_t seed) {
  const size_t nq = size_t(c.n * c.NH * c.HD), nkv = size_t((c.p0 + c.n) * c.NKV * c.HD);
  return {float_exact(randn(nq, seed, 1.0)), float_exact(randn(nkv, seed + 1, 1.0)),
          float_exact(randn(nkv, seed + 2, 1.0))};
}

// One call of attention_decode on the GPU over the rows [i0, i0 + n) of the case's new tokens.
std::vector<float> gpu_decode(const DecodeCase& c, const Inputs& in, int64_t i0, int64_t n, const Context& ctx) {
  const std::vector<float> q = to_float(in.q), k = to_float(in.k), v = to_float(in.v);
  const int64_t Q = c.NH * c.HD;
  DeviceArray<float> dq(n * Q, ctx), dk(int64_t(k.size()), ctx), dv(int64_t(v.size()), ctx), dout(n * Q, ctx);
  copy_to_device(dq.data(), q.data() + i0 * Q, size_t(n * Q) * sizeof(float), ctx);
  copy_to_device(dk.data(), k.data(), k.size() * sizeof(float), ctx);
  copy_to_device(dv.data(), v.data(), v.size() * sizeof(float), ctx);
  fill_zero<float>(dout.data(), n * Q, ctx);
  attention_decode<float>(dout.data(), dq.data(), dk.data(), dv.data(), n, c.p0 + i0, c.NH, c.NKV, c.HD, c.window,
                          ctx);
  std::vector<float> out(size_t(n * Q));
  copy_to_host(out.data(), dout.data(), out.size() * sizeof(float), ctx);
  return out;
}

void expect_matches_cpu(const DecodeCase& c, const Context& ctx, uint64_t seed) {
  SCOPED_TRACE(name(c));
  const Inputs in = make_inputs(c, seed);
  Vec want(size_t(c.n * c.NH * c.HD));
  attention_decode<double>(want.data(), in.q.data(), in.k.data(), in.v.data(), c.n, c.p0, c.NH, c.NKV, c.HD,
                           c.window);
  const std::vector<float> got = gpu_decode(c, in, 0, c.n, ctx);
  EXPECT_LT(rel_err(got, want), kFloatTol);
  std::vector<float> cpu(want.size());
  const std::vector<float> q = to_float(in.q), k = to_float(in.k), v = to_float(in.v);
  attention_decode<float>(cpu.data(), q.data(), k.data(), v.data(), c.n, c.p0, c.NH, c.NKV, c.HD, c.window);
  EXPECT_LT(rel_err(cpu, want), kFloatTol);
  // not trivially small: the comparison would prove nothing
  double biggest = 0;
  for (double x : want) biggest = std::max(biggest, std::abs(x));
  EXPECT_GT(biggest, 0.05);
}

}  // namespace

TEST(CudaDecodeAttention, MatchesCpuOverGqaRatiosHeadSizesAndCacheLengths) {
  SKIP_WITHOUT_GPU();
  CudaContext gpu(0);
  uint64_t seed = 100;
  for (auto [NH, NKV] : {std::pair<int64_t, int64_t>{4, 4}, {8, 4}, {8, 2}})
    for (int64_t HD : {64, 128, 37})
      for (auto [n, p0] : {std::pair<int64_t, int64_t>{1, 0}, {1, 1}, {1, 127}, {1, 300}, {5, 40}, {33, 0}})
        expect_matches_cpu({n, p0, NH, NKV, HD, 0}, gpu.ctx(), seed += 3);
}

TEST(CudaDecodeAttention, SlidingWindowMatchesCpu) {
  SKIP_WITHOUT_GPU();
  CudaContext gpu(0);
  uint64_t seed = 500;
  for (auto [NH, NKV] : {std::pair<int64_t, int64_t>{4, 4}, {8, 2}})
    for (int64_t HD : {64, 37})
      for (int64_t window : {1, 7, 40, 1000})  // itself only, shorter than the cache, spanning tiles, longer
        for (auto [n, p0] : {std::pair<int64_t, int64_t>{1, 0}, {1, 200}, {6, 33}, {20, 0}})
          expect_matches_cpu({n, p0, NH, NKV, HD, window}, gpu.ctx(), seed += 3);
}

TEST(CudaDecodeAttention, LargeAndTinyHeadSizes) {
  SKIP_WITHOUT_GPU();
  CudaContext gpu(0);
  expect_matches_cpu({3, 150, 4, 1, 256, 0}, gpu.ctx(), 900);
  expect_matches_cpu({3, 150, 4, 2, 5, 0}, gpu.ctx(), 903);
  expect_matches_cpu({2, 70, 2, 2, 96, 16}, gpu.ctx(), 906);
}

// Each (token, head) is computed from its own absolute position only: feeding a chunk at once or token by
// token gives the same bits (what makes a GPU prefill + decode equal to a GPU decode of the same tokens).
TEST(CudaDecodeAttention, ChunkEqualsTokenByTokenBitForBit) {
  SKIP_WITHOUT_GPU();
  CudaContext gpu(0);
  const DecodeCase c{12, 90, 8, 2, 64, 0};
  const Inputs in = make_inputs(c, 1234);
  const std::vector<float> chunk = gpu_decode(c, in, 0, c.n, gpu.ctx());
  const int64_t Q = c.NH * c.HD;
  for (int64_t i = 0; i < c.n; ++i) {
    const std::vector<float> one = gpu_decode(c, in, i, 1, gpu.ctx());
    EXPECT_EQ(one, std::vector<float>(chunk.begin() + i * Q, chunk.begin() + (i + 1) * Q)) << "token " << i;
  }
}

TEST(CudaDecodeAttention, RejectsWhatItCannotRun) {
  SKIP_WITHOUT_GPU();
  CudaContext gpu(0);
  DeviceArray<float> x(4096, gpu.ctx());
  float* p = x.data();
  EXPECT_THROW(attention_decode<float>(p, p, p, p, 1, 0, 1, 1, 257, 0, gpu.ctx()), core::Error);  // HD > 256
  EXPECT_THROW(attention_decode<float>(p, p, p, p, 1, 0, 6, 4, 8, 0, gpu.ctx()), core::Error);    // NH % NKV
  EXPECT_THROW(attention_decode<float>(p, p, p, p, 1, 0, 1, 1, 8, -1, gpu.ctx()), core::Error);   // window < 0
  std::vector<double> d(64, 1.0);
  EXPECT_THROW(attention_decode<double>(d.data(), d.data(), d.data(), d.data(), 1, 0, 1, 1, 8, 0, gpu.ctx()),
               core::Error);  // double runs on the CPU only
}
