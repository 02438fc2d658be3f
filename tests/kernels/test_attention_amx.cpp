// The bf16 attention products on AMX tiles (kernels/cpu/amx_gemm.h, amx_gemm_bf16, taken by the blocked bf16
// attention where amx_gemm_in_use()): the batched GEMM against double on the same bf16 operands at every tail,
// and the whole bf16 attention (forward, lse, dq, dk, dv) against the same kernels with the products through
// oneDNN's bf16 matmul (ZEROLORA_AMX_GEMM=0's path) on odd shapes: T, head dims and padding that leave tails,
// GQA groups that give every block geometry, packing (kv_begin), sliding windows, two key chunks. Skips, with
// one line, where the AMX kernels do not run.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/runtime.h"
#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;

namespace {

#define SKIP_WITHOUT_AMX()                                                                    \
  if (!cpu::amx_gemm_in_use() || !cpu::bf16_use_native())                                    \
  GTEST_SKIP() << (cpu::amx_supported()                                                       \
                       ? "AMX kernels off (ONEDNN_MAX_CPU_ISA below AMX, or ZEROLORA_AMX_GEMM=0)" \
                       : "no AMX-BF16 on this CPU (or the kernel refused the tile state)")

uint64_t lcg(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

// bf16 bits of values in [-2, 2]
std::vector<uint16_t> random_bf16(size_t n, uint64_t seed) {
  std::vector<uint16_t> v(n);
  for (auto& e : v) e = core::f32_to_bf16(float(int64_t(lcg(seed) % 4001) - 2000) / 1000.0f);
  return v;
}

double f(uint16_t b) { return core::bf16_to_f32(b); }

// One batched product against double. The bound: both sides multiply the same bf16 values (each product exact in
// fp32) and sum K terms in fp32 in some order, off by at most (K - 1) 2^-24 sum_k |a_k b_k| (Higham's gamma),
// plus the starting value's own rounding when accumulating: |got - ref| <= (K + 1) 2^-24 (sum |terms| + |C0|).
void check_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, bool trans_b, bool accumulate, uint64_t seed) {
  // strides wider than the data, so that reading or writing past a row or a batch element shows
  const int64_t lda = K + 3, ldb = (trans_b ? K : N) + 5, ldc = N + 2;
  const int64_t sa = M * lda + 7, sb = (trans_b ? N : K) * ldb + 1, sc = M * ldc + 9;
  const std::vector<uint16_t> A = random_bf16(size_t(batch * sa), seed), B = random_bf16(size_t(batch * sb), seed + 1);
  std::vector<float> C(size_t(batch * sc));
  uint64_t s = seed + 2;
  for (auto& e : C) e = float(int64_t(lcg(s) % 2001) - 1000) / 100.0f;
  const std::vector<float> C0 = C;
  cpu::amx_gemm_bf16({batch, M, N, K, lda, ldb, ldc, sa, sb, sc, trans_b, accumulate}, A.data(), B.data(), C.data());
  double worst = 0;
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const double before = accumulate ? C0[size_t(i * sc + m * ldc + n)] : 0.0;
        double ref = before, scale = std::abs(before);
        for (int64_t k = 0; k < K; ++k) {
          const double b = trans_b ? f(B[size_t(i * sb + n * ldb + k)]) : f(B[size_t(i * sb + k * ldb + n)]);
          const double p = f(A[size_t(i * sa + m * lda + k)]) * b;
          ref += p;
          scale += std::abs(p);
        }
        const double err = std::abs(C[size_t(i * sc + m * ldc + n)] - ref);
        worst = std::max(worst, err / (double(K + 1) * std::ldexp(1.0, -24) * scale + 1e-30));
      }
  EXPECT_LE(worst, 1.0) << "batch=" << batch << " M=" << M << " N=" << N << " K=" << K << " trans_b=" << trans_b
                        << " accumulate=" << accumulate << " (error / bound)";
  // nothing outside the batch elements' M x N windows changed
  size_t touched = 0;
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = N; j < ldc; ++j) touched += C[size_t(i * sc + m * ldc + j)] != C0[size_t(i * sc + m * ldc + j)];
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t j = M * ldc; j < sc && i * sc + j < int64_t(C.size()); ++j)
      touched += C[size_t(i * sc + j)] != C0[size_t(i * sc + j)];
  EXPECT_EQ(touched, 0u) << "M=" << M << " N=" << N << " K=" << K;
}

}  // namespace

TEST(AmxGemmBf16, MatchesDoubleOnEveryTail) {
  SKIP_WITHOUT_AMX();
  // rows, columns and the reduction below, at and past the 16 x 16 tiles, the 32 x 32 blocks and the 32-deep
  // k steps; both B layouts; overwriting and accumulating
  for (int64_t M : {1, 16, 17, 33, 64})
    for (int64_t N : {1, 15, 32, 47})
      for (int64_t K : {1, 12, 32, 40, 80})
        for (bool trans_b : {false, true})
          for (bool acc : {false, true}) check_gemm(2, M, N, K, trans_b, acc, uint64_t(M * 1000 + N * 10 + K));
  // attention's own shapes: 512 rows x 256 keys over a head dim of 64, and the transposed products over 512 rows
  check_gemm(4, 512, 256, 64, true, false, 1);
  check_gemm(4, 512, 64, 256, false, true, 2);
  check_gemm(4, 64, 256, 512, false, true, 3);
}

// The pair kernel hands each 32 x 32 block of both products to the epilogue once, and every entry is the fp32 sum
// amx_gemm_bf16 forms for the same operands (trans_b, overwriting), bit for bit: compared against two
// amx_gemm_bf16 calls (themselves bounded against double above), with strides wider than the data and 2 threads.
namespace {
struct PairCapture {
  int64_t M, N;
  std::vector<float>*c1, *c2;
  std::vector<int>* seen;
  static void run(void* ctx, int64_t i, int64_t m0, int64_t n0, const float* a, const float* b) {
    auto& e = *static_cast<PairCapture*>(ctx);
    for (int64_t r = 0; r < 32; ++r)
      for (int64_t c = 0; c < 32; ++c) {
        const size_t at = size_t((i * e.M + m0 + r) * e.N + n0 + c);
        (*e.c1)[at] = a[r * 32 + c];
        (*e.c2)[at] = b[r * 32 + c];
      }
#pragma omp atomic
    (*e.seen)[size_t((i * e.M + m0) / 32 * (e.N / 32) + n0 / 32)] += 1;
  }
};
}  // namespace

TEST(AmxGemmBf16, PairEqualsTwoProductsBitForBit) {
  SKIP_WITHOUT_AMX();
  const std::array<int64_t, 4> shapes[] = {{1, 32, 32, 32}, {3, 96, 64, 64}, {4, 512, 256, 64}, {2, 64, 128, 128}};
  for (auto [batch, M, N, K] : shapes) {
    SCOPED_TRACE("batch " + std::to_string(batch) + " M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                 std::to_string(K));
    const int64_t lda = K + 32, ldb = K + 16, sa = M * lda + 64, sb = N * ldb + 32;
    const uint64_t seed = uint64_t(batch * 7 + M + N + K);
    const auto A1 = random_bf16(size_t(batch * sa), seed), B1 = random_bf16(size_t(batch * sb), seed + 1);
    const auto A2 = random_bf16(size_t(batch * sa), seed + 2), B2 = random_bf16(size_t(batch * sb), seed + 3);
    std::vector<float> r1(size_t(batch * M * N)), r2(r1.size()), c1(r1.size(), -1.0f), c2(r1.size(), -1.0f);
    cpu::amx_gemm_bf16({batch, M, N, K, lda, ldb, N, sa, sb, M * N, true, false}, A1.data(), B1.data(), r1.data());
    cpu::amx_gemm_bf16({batch, M, N, K, lda, ldb, N, sa, sb, M * N, true, false}, A2.data(), B2.data(), r2.data());
    std::vector<int> seen(size_t(batch * (M / 32) * (N / 32)), 0);
    PairCapture cap{M, N, &c1, &c2, &seen};
    const int before = core::num_threads();
    core::set_num_threads(std::min(2, core::default_num_threads()));
    cpu::amx_gemm_bf16_pair({batch, M, N, K, lda, ldb, sa, sb}, A1.data(), B1.data(), A2.data(), B2.data(),
                            &PairCapture::run, &cap);
    core::set_num_threads(before);
    EXPECT_TRUE(c1 == r1);
    EXPECT_TRUE(c2 == r2);
    EXPECT_EQ(seen, std::vector<int>(seen.size(), 1)) << "every block exactly once";
  }
  EXPECT_THROW(cpu::amx_gemm_bf16_pair({1, 48, 32, 32, 32, 32, 0, 0}, nullptr, nullptr, nullptr, nullptr,
                                       &PairCapture::run, nullptr),
               core::Error);
}

// The rows kernel hands each 32-row block of the product, all N columns, to the epilogue once, with the sums
// amx_gemm_bf16 forms (trans_b, overwriting), bit for bit; several batch elements, so threads meet new B's.
namespace {
struct RowsCapture {
  int64_t M, N;
  std::vector<float>* c;
  std::vector<int>* seen;
  static void run(void* ctx, int64_t i, int64_t m0, const float* a) {
    auto& e = *static_cast<RowsCapture*>(ctx);
    for (int64_t r = 0; r < 32; ++r)
      for (int64_t n = 0; n < e.N; ++n) (*e.c)[size_t((i * e.M + m0 + r) * e.N + n)] = a[r * e.N + n];
#pragma omp atomic
    (*e.seen)[size_t((i * e.M + m0) / 32)] += 1;
  }
};
}  // namespace

TEST(AmxGemmBf16, RowsEqualOneProductBitForBit) {
  SKIP_WITHOUT_AMX();
  const std::array<int64_t, 4> shapes[] = {{1, 32, 32, 32}, {5, 96, 64, 64}, {4, 512, 256, 64}, {2, 64, 96, 128}};
  for (auto [batch, M, N, K] : shapes) {
    SCOPED_TRACE("batch " + std::to_string(batch) + " M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                 std::to_string(K));
    const int64_t lda = K + 32, ldb = K + 16, sa = M * lda + 64, sb = N * ldb + 32;
    const uint64_t seed = uint64_t(batch * 11 + M + N + K);
    const auto A = random_bf16(size_t(batch * sa), seed), B = random_bf16(size_t(batch * sb), seed + 1);
    std::vector<float> ref(size_t(batch * M * N)), got(ref.size(), -1.0f);
    cpu::amx_gemm_bf16({batch, M, N, K, lda, ldb, N, sa, sb, M * N, true, false}, A.data(), B.data(), ref.data());
    std::vector<int> seen(size_t(batch * (M / 32)), 0);
    RowsCapture cap{M, N, &got, &seen};
    const int before = core::num_threads();
    core::set_num_threads(std::min(2, core::default_num_threads()));
    cpu::amx_gemm_bf16_rows({batch, M, N, K, lda, ldb, sa, sb}, A.data(), B.data(), &RowsCapture::run, &cap);
    core::set_num_threads(before);
    EXPECT_TRUE(got == ref);
    EXPECT_EQ(seen, std::vector<int>(seen.size(), 1)) << "every block exactly once";
  }
  EXPECT_THROW(cpu::amx_gemm_bf16_rows({1, 32, 40, 32, 32, 32, 0, 0}, nullptr, nullptr, &RowsCapture::run, nullptr),
               core::Error);
}

TEST(AmxGemmBf16, EmptyReductionZeroesOrKeeps) {
  SKIP_WITHOUT_AMX();
  std::vector<float> C(6, 5.0f);
  const uint16_t none = 0;
  cpu::amx_gemm_bf16({1, 2, 3, 0, 1, 1, 3, 0, 0, 6, false, true}, &none, &none, C.data());
  EXPECT_EQ(C, std::vector<float>(6, 5.0f));
  cpu::amx_gemm_bf16({1, 2, 3, 0, 1, 1, 3, 0, 0, 6, false, false}, &none, &none, C.data());
  EXPECT_EQ(C, std::vector<float>(6, 0.0f));
}

namespace {

struct Problem {
  std::string name;
  AttentionShape s;
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> lengths, kv_begin;
};

// Row 0 full length, packing a second sample from pack_at on (0: none); the other rows `len` long (padding).
Problem make_problem(std::string name, AttentionShape s, int32_t len, int64_t pack_at, uint64_t seed) {
  Problem p{std::move(name), s, {}, {}, {}, {}, {}, {}};
  const size_t nq = size_t(s.B * s.T * s.NH * s.HD), nkv = size_t(s.B * s.T * s.NKV * s.HD);
  for (auto [buf, n] : {std::pair{&p.q, nq}, std::pair{&p.k, nkv}, std::pair{&p.v, nkv}, std::pair{&p.dout, nq}}) {
    buf->resize(n);
    for (auto& e : *buf) e = float(int64_t(lcg(seed) % 2001) - 1000) / 500.0f;
  }
  p.lengths.assign(size_t(s.B), len);
  p.lengths[0] = int32_t(s.T);
  p.kv_begin.assign(size_t(s.B * s.T), 0);
  if (pack_at > 0)
    for (int64_t t = pack_at; t < s.T; ++t) p.kv_begin[size_t(t)] = int32_t(pack_at);
  return p;
}

struct Result {
  std::vector<float> o, lse, dq, dk, dv;
};

Result run_bf16(const Problem& p) {
  const AttentionShape& s = p.s;
  const size_t nq = size_t(s.B * s.T * s.NH * s.HD), nkv = size_t(s.B * s.T * s.NKV * s.HD);
  Result r{std::vector<float>(nq, 7.f), std::vector<float>(size_t(s.B * s.NH * s.T), 7.f),
           std::vector<float>(nq, 7.f), std::vector<float>(nkv, 7.f), std::vector<float>(nkv, 7.f)};
  const AttentionIsa isa = attention_best_isa();
  attention_forward_blocked(isa, AttentionOperands::Bf16, r.o.data(), r.lse.data(), p.q.data(), p.k.data(),
                            p.v.data(), s, p.lengths.data(), p.kv_begin.data());
  attention_backward_blocked(isa, AttentionOperands::Bf16, r.dq.data(), r.dk.data(), r.dv.data(), p.dout.data(),
                             p.q.data(), p.k.data(), p.v.data(), r.o.data(), r.lse.data(), s, p.lengths.data(),
                             p.kv_begin.data());
  return r;
}

// max |x - y| / max |y|
double max_rel(const std::vector<float>& x, const std::vector<float>& y) {
  double d = 0, m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    d = std::max(d, double(std::abs(x[i] - y[i])));
    m = std::max(m, double(std::abs(y[i])));
  }
  return d / std::max(m, 1e-30);
}

}  // namespace

// The tolerance. Both paths round q, k, v and dout to the same bf16 values and accumulate every product in fp32;
// they differ in the order of the fp32 sums only. (1) S and dP: K = HD terms, off by at most HD 2^-24 sum|terms|
// (<= 80 * 6e-8 = 5e-6 relative to sum|terms|); lse (= m + log l over fp32 S, no bf16-rounded value in it)
// inherits that: 1e-5. (2) P and dS are rounded to bf16 from those fp32 values, so where an fp32 value lies
// within that difference of a bf16 rounding midpoint the two paths round it to neighbouring bf16 values: one bf16
// ulp, at most 2^-7 relative, of that one term. Such flips are rare (a relative difference of ~1e-6 against an
// ulp of 2^-8: about 1 element in 10^4) and a flipped term is one of up to T terms of its sum, so the outputs
// differ by a few 2^-7 |term|; 4e-3 of the largest output (as for oneDNN's bf16 matmul against widened sgemm,
// Bf16BlockedNativeMatchesWidened) leaves room for two flips on a dominant term. (3) The fp32 sums of
// O, dQ, dK, dV themselves: <= 512 2^-24 = 3e-5 relative to sum|terms|.
TEST(AttentionAmx, MatchesOneDnnBf16ProductsOnOddShapes) {
  SKIP_WITHOUT_AMX();
  std::vector<Problem> problems = {
      // tails: T not a multiple of the 64-key alignment, padding ending inside a block, a fully padded block
      make_problem("tails 8/1 HD 64", {2, 300, 8, 1, 64}, 97, 0, 11),
      // GQA groups of 2 (128-row blocks) and 3; head dims that are not multiples of 16 or 32 (padded tiles)
      make_problem("gqa 4/2 HD 40 packed", {2, 200, 4, 2, 40}, 70, 60, 12),
      make_problem("gqa 6/2 HD 12 packed", {2, 77, 6, 2, 12}, 1, 33, 13),
      make_problem("mha 2/2 HD 80", {3, 130, 2, 2, 80}, 65, 0, 14),
      make_problem("gqa 8/2 HD 16 packed twice", {1, 150, 8, 2, 16}, 150, 70, 15),
  };
  // a second packed boundary in the last problem's row 0
  for (int64_t t = 110; t < 150; ++t) problems.back().kv_begin[size_t(t)] = 110;
  // sliding windows (Mistral, Qwen2) smaller than a block, between blocks, and with packing
  for (int64_t w : {8, 70}) {
    Problem p = make_problem("window " + std::to_string(w), {2, 150, 4, 2, 32}, 100, 45, uint64_t(20 + w));
    p.s.window = w;
    problems.push_back(std::move(p));
  }
  for (int64_t chunk : {256, 64}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (const Problem& p : problems) {
      SCOPED_TRACE(p.name + ", chunk " + std::to_string(chunk));
      const Result amx = run_bf16(p);
      cpu::set_amx_gemm_enabled(false);
      const Result onednn = run_bf16(p);
      cpu::set_amx_gemm_enabled(true);
      EXPECT_LT(max_rel(amx.o, onednn.o), 4e-3) << "out";
      EXPECT_LT(max_rel(amx.lse, onednn.lse), 1e-5) << "lse";
      EXPECT_LT(max_rel(amx.dq, onednn.dq), 4e-3) << "dq";
      EXPECT_LT(max_rel(amx.dk, onednn.dk), 4e-3) << "dk";
      EXPECT_LT(max_rel(amx.dv, onednn.dv), 4e-3) << "dv";
      // and typically much closer: most outputs see no flipped P or dS at all
      EXPECT_EQ(std::count(amx.o.begin(), amx.o.end(), 7.f), 0) << "an output left unwritten";
      std::printf("%s, chunk %lld: max rel. difference out %.1e lse %.1e dq %.1e dk %.1e dv %.1e\n", p.name.c_str(),
                  (long long)chunk, max_rel(amx.o, onednn.o), max_rel(amx.lse, onednn.lse),
                  max_rel(amx.dq, onednn.dq), max_rel(amx.dk, onednn.dk), max_rel(amx.dv, onednn.dv));
    }
    attention_blocked_key_chunk(before);
  }
  bool amx_seen = false;
  for (const auto& line : attention_blocked_native_kernels()) amx_seen |= line.find("AMX tiles") != std::string::npos;
  EXPECT_TRUE(amx_seen) << "the bf16 products never ran on the AMX kernel";
}

// attention_forward / attention_backward with shape.bf16 (what the model calls) take the AMX products: equal, bit
// for bit, to the blocked bf16 kernels with AMX on, and not to them with AMX off (the products' sums differ).
TEST(AttentionAmx, Bf16ShapeTakesTheAmxProducts) {
  SKIP_WITHOUT_AMX();
  Problem p = make_problem("dispatch", {2, 150, 8, 2, 64}, 90, 50, 31);
  const Result blocked = run_bf16(p);
  p.s.bf16 = true;
  const size_t nq = p.q.size(), nkv = p.k.size();
  std::vector<float> o(nq), lse(size_t(p.s.B * p.s.NH * p.s.T)), dq(nq), dk(nkv), dv(nkv);
  attention_forward<float>(o.data(), lse.data(), p.q.data(), p.k.data(), p.v.data(), p.s, p.lengths.data(),
                           p.kv_begin.data());
  attention_backward<float>(dq.data(), dk.data(), dv.data(), p.dout.data(), p.q.data(), p.k.data(), p.v.data(),
                            o.data(), lse.data(), p.s, p.lengths.data(), p.kv_begin.data());
  EXPECT_EQ(o, blocked.o);
  EXPECT_EQ(lse, blocked.lse);
  EXPECT_EQ(dq, blocked.dq);
  EXPECT_EQ(dk, blocked.dk);
  EXPECT_EQ(dv, blocked.dv);
}

// The scores taken straight from the tile unit (the default: the forward's softmax per 32 rows of S, the backward's
// P and dS per 32 x 32 block of S and dP) against the path that writes S (and dP) out and makes a pass over them:
// the same values (out, lse, dq, dk, dv), bit for bit, on shapes
// with padding, packing, a sliding window, GQA groups of 8 and 2, head sizes 64 and 128 (and 40: not a multiple of
// 32, where the fused path does not apply and both runs take the unfused one), two key chunks, 1 and 2 threads.
TEST(AttentionAmx, FusedScoresEqualTheUnfusedPassBitForBit) {
  SKIP_WITHOUT_AMX();
  std::vector<Problem> problems = {make_problem("gqa 8/2 HD 64 packed", {2, 200, 8, 2, 64}, 150, 90, 51),
                                   make_problem("gqa 4/2 HD 128 padded", {2, 130, 4, 2, 128}, 65, 0, 52),
                                   make_problem("mha 2/2 HD 40", {1, 100, 2, 2, 40}, 100, 0, 53)};
  problems[0].s.window = 70;
  const int before = core::num_threads();
  for (int threads : {1, 2}) {
    if (threads > core::default_num_threads()) continue;
    core::set_num_threads(threads);
    for (int64_t chunk : {256, 64}) {
      const int64_t chunk_before = attention_blocked_key_chunk(chunk);
      for (const Problem& p : problems) {
        SCOPED_TRACE(p.name + ", chunk " + std::to_string(chunk) + ", threads " + std::to_string(threads));
        const Result fused = run_bf16(p);
        const bool was = attention_blocked_fused_scores(false);
        const Result unfused = run_bf16(p);
        attention_blocked_fused_scores(was);
        EXPECT_TRUE(fused.o == unfused.o) << "out";
        EXPECT_TRUE(fused.lse == unfused.lse) << "lse";
        EXPECT_TRUE(fused.dq == unfused.dq) << "dq";
        EXPECT_TRUE(fused.dk == unfused.dk) << "dk";
        EXPECT_TRUE(fused.dv == unfused.dv) << "dv";
      }
      attention_blocked_key_chunk(chunk_before);
    }
  }
  core::set_num_threads(before);
  // the fused paths did run (their lines in the record of kernels)
  bool forward = false, backward = false;
  for (const std::string& line : attention_blocked_native_kernels()) {
    forward |= line.find("the softmax per 32 rows (forward)") != std::string::npos;
    backward |= line.find("P and dS formed per 32 x 32 block") != std::string::npos;
  }
  EXPECT_TRUE(forward);
  EXPECT_TRUE(backward);
}

// With the AMX products and kv heads that divide evenly over the threads, each thread runs whole kv heads alone (one
// parallel region per batch row, no barrier inside); otherwise every pass and product is split over the team. Both
// compute every value the same way (rows are independent, each product block is summed by one thread in one order):
// equal bit for bit. Chosen here through the thread count: 4 kv heads run per head on 2 threads, split on 1 (not
// more threads than the machine's default: growing clang's OpenMP pool leaves allocations LeakSanitizer reports).
// Several runs, two key chunks: the threads' heads reach key chunks of different lengths at different times (a
// layout of the chunk buffers that depended on the chunk's length once let one head's scores overwrite another's).
TEST(AttentionAmx, HeadPerThreadEqualsSplitPasses) {
  SKIP_WITHOUT_AMX();
  if (core::default_num_threads() < 2) GTEST_SKIP() << "one thread only here";
  const Problem p = make_problem("schedules", {2, 200, 8, 4, 64}, 150, 90, 41);
  const int before = core::num_threads();
  for (int64_t chunk : {64, 128}) {
    const int64_t chunk_before = attention_blocked_key_chunk(chunk);
    core::set_num_threads(1);
    const Result split = run_bf16(p);
    core::set_num_threads(2);
    for (int run = 0; run < 4; ++run) {
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", run " + std::to_string(run));
      const Result per_head = run_bf16(p);
      EXPECT_TRUE(per_head.o == split.o) << "out";
      EXPECT_TRUE(per_head.lse == split.lse) << "lse";
      EXPECT_TRUE(per_head.dq == split.dq) << "dq";
      EXPECT_TRUE(per_head.dk == split.dk) << "dk";
      EXPECT_TRUE(per_head.dv == split.dv) << "dv";
    }
    attention_blocked_key_chunk(chunk_before);
  }
  core::set_num_threads(before);
}
