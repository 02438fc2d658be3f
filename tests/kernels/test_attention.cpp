// Flash attention vs a naive full T x T softmax; gradient checks of the backward (GQA, right
// padding, packing across key/query tiles); float vs double; argument validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "check.h"
#include "core/error.h"
#include "core/runtime.h"
#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;

namespace {

struct Case {
  AttentionShape s;
  std::vector<int32_t> lengths;   // empty = all T
  std::vector<int32_t> kv_begin;  // empty = 0
  Vec q, k, v;
  const int32_t* len_ptr() const { return lengths.empty() ? nullptr : lengths.data(); }
  const int32_t* kvb_ptr() const { return kv_begin.empty() ? nullptr : kv_begin.data(); }
  int64_t len(int64_t b) const { return lengths.empty() ? s.T : lengths[b]; }
  // the definition of the key range: the sample's start, and with a window keys j > t - window only
  int64_t lo(int64_t b, int64_t t) const {
    const int64_t begin = kv_begin.empty() ? 0 : kv_begin[b * s.T + t];
    return s.window > 0 ? std::max(begin, t - s.window + 1) : begin;
  }
  size_t nq() const { return size_t(s.B * s.T * s.NH * s.HD); }
  size_t nkv() const { return size_t(s.B * s.T * s.NKV * s.HD); }
};

Case make_case(AttentionShape s, std::vector<int32_t> lengths, std::vector<int32_t> kv_begin, uint64_t seed) {
  Case c{s, std::move(lengths), std::move(kv_begin), {}, {}, {}};
  c.q = float_exact(randn(c.nq(), seed, 1.0));
  c.k = float_exact(randn(c.nkv(), seed + 1, 1.0));
  c.v = float_exact(randn(c.nkv(), seed + 2, 1.0));
  return c;
}

// kv_begin for rows packed with samples of the given lengths (then padding keeps the last value)
std::vector<int32_t> packed_begin(int64_t T, std::vector<int64_t> sample_lengths) {
  std::vector<int32_t> kvb;
  int32_t start = 0;
  for (int64_t n : sample_lengths) {
    for (int64_t i = 0; i < n; ++i) kvb.push_back(start);
    start += int32_t(n);
  }
  while (int64_t(kvb.size()) < T) kvb.push_back(start);
  return kvb;
}

// The definition: full score row, masked, softmax, weighted sum. Query head h reads kv head h/(NH/NKV).
void naive(const Case& c, Vec& out, Vec& lse) {
  const auto& s = c.s;
  const int64_t group = s.NH / s.NKV;
  out.assign(c.nq(), 0.0);
  lse.assign(size_t(s.B * s.NH * s.T), 0.0);
  const double scale = 1 / std::sqrt(double(s.HD));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.NH; ++h)
      for (int64_t t = 0; t < c.len(b); ++t) {
        Vec sc(size_t(s.T), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = c.lo(b, t); j <= t; ++j) {
          double d = 0;
          for (int64_t i = 0; i < s.HD; ++i)
            d += c.q[((b * s.T + t) * s.NH + h) * s.HD + i] * c.k[((b * s.T + j) * s.NKV + h / group) * s.HD + i];
          sc[j] = d * scale;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < s.T; ++j) sum += std::exp(sc[j] - mx);
        for (int64_t j = 0; j < s.T; ++j) {
          double p = std::exp(sc[j] - mx) / sum;
          for (int64_t i = 0; i < s.HD; ++i)
            out[((b * s.T + t) * s.NH + h) * s.HD + i] += p * c.v[((b * s.T + j) * s.NKV + h / group) * s.HD + i];
        }
        lse[(b * s.NH + h) * s.T + t] = mx + std::log(sum);
      }
}

template <typename S>
void run_forward(const Case& c, std::vector<S>& out, std::vector<S>& lse) {
  std::vector<S> q(c.q.begin(), c.q.end()), k(c.k.begin(), c.k.end()), v(c.v.begin(), c.v.end());
  out.assign(c.nq(), S(NAN));  // every entry must be written
  lse.assign(size_t(c.s.B * c.s.NH * c.s.T), S(NAN));
  attention_forward<S>(out.data(), lse.data(), q.data(), k.data(), v.data(), c.s, c.len_ptr(), c.kvb_ptr());
}

template <typename S>
void run_backward(const Case& c, const Vec& R, std::vector<S>& dq, std::vector<S>& dk, std::vector<S>& dv) {
  std::vector<S> q(c.q.begin(), c.q.end()), k(c.k.begin(), c.k.end()), v(c.v.begin(), c.v.end());
  std::vector<S> out, lse, dout(R.begin(), R.end());
  run_forward<S>(c, out, lse);
  dq.assign(c.nq(), S(NAN));  // overwritten (=), padded rows included
  dk.assign(c.nkv(), S(NAN));
  dv.assign(c.nkv(), S(NAN));
  attention_backward<S>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                        lse.data(), c.s, c.len_ptr(), c.kvb_ptr());
}

void expect_forward_matches_naive(const Case& c) {
  Vec want_out, want_lse, out, lse;
  naive(c, want_out, want_lse);
  run_forward<double>(c, out, lse);
  EXPECT_LT(rel_err(out, want_out), 1e-13);
  EXPECT_LT(rel_err(lse, want_lse), 1e-13);
  std::vector<float> outf, lsef;
  run_forward<float>(c, outf, lsef);
  EXPECT_LT(rel_err(outf, want_out), kFloatTol);
  EXPECT_LT(rel_err(lsef, want_lse), kFloatTol);
}

// L = sum(out * R); central differences over `budget` random coordinates of each of q, k, v.
void expect_gradients(Case c, size_t budget, uint64_t seed) {
  Vec R = randn(c.nq(), seed);
  Vec dq, dk, dv;
  run_backward<double>(c, R, dq, dk, dv);
  auto loss = [&] {
    Vec out, lse;
    run_forward<double>(c, out, lse);
    return dot(out, R);
  };
  auto iq = some_indices(c.q.size(), budget, seed + 1), ik = some_indices(c.k.size(), budget, seed + 2),
       iv = some_indices(c.v.size(), budget, seed + 3);
  EXPECT_LT(rel_err(masked(dq, iq), numeric_grad(c.q, loss, 1e-6, iq)), kGradTol) << "dq";
  EXPECT_LT(rel_err(masked(dk, ik), numeric_grad(c.k, loss, 1e-6, ik)), kGradTol) << "dk";
  EXPECT_LT(rel_err(masked(dv, iv), numeric_grad(c.v, loss, 1e-6, iv)), kGradTol) << "dv";
  // the gradients are not trivially zero
  EXPECT_GT(rel_err(dq, Vec(dq.size(), 0.0)), 0.0);
}

}  // namespace

TEST(Attention, ForwardMatchesNaiveSingleHead) {
  expect_forward_matches_naive(make_case({1, 5, 1, 1, 8}, {}, {}, 1));
}

TEST(Attention, ForwardMatchesNaiveGqaPaddingPacking) {
  // T = 150 spans 5 query tiles and 3 key tiles; row 0 holds three packed samples, row 1 is padded
  const int64_t T = 150;
  auto kvb0 = packed_begin(T, {70, 45, 35});
  auto kvb1 = packed_begin(T, {100});
  std::vector<int32_t> kvb = kvb0;
  kvb.insert(kvb.end(), kvb1.begin(), kvb1.end());
  expect_forward_matches_naive(make_case({2, T, 4, 2, 16}, {150, 100}, kvb, 2));
  expect_forward_matches_naive(make_case({2, T, 6, 3, 8}, {}, {}, 3));
  expect_forward_matches_naive(make_case({3, 37, 4, 1, 128}, {37, 1, 20}, {}, 4));
}

TEST(Attention, PaddedRowsAreZero) {
  Case c = make_case({2, 40, 2, 1, 8}, {40, 13}, {}, 5);
  std::vector<float> out, lse, dq, dk, dv;
  run_forward<float>(c, out, lse);
  for (int64_t t = 13; t < 40; ++t)
    for (int64_t h = 0; h < 2; ++h) {
      EXPECT_EQ(lse[(1 * 2 + h) * 40 + t], 0.0f);
      for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(out[((40 + t) * 2 + h) * 8 + i], 0.0f);
    }
  run_backward<float>(c, randn(c.nq(), 6), dq, dk, dv);
  for (int64_t t = 13; t < 40; ++t)
    for (int64_t i = 0; i < 8; ++i) {
      EXPECT_EQ(dk[(40 + t) * 8 + i], 0.0f);
      EXPECT_EQ(dv[(40 + t) * 8 + i], 0.0f);
      for (int64_t h = 0; h < 2; ++h) EXPECT_EQ(dq[((40 + t) * 2 + h) * 8 + i], 0.0f);
    }
}

// Two samples packed into one row give exactly what they give in rows of their own.
TEST(Attention, PackedRowEqualsSeparateRows) {
  const int64_t T = 12, NH = 2, HD = 8, n1 = 7, n2 = 5;
  Case packed = make_case({1, T, NH, 1, HD}, {}, packed_begin(T, {n1, n2}), 7);
  Case split = make_case({2, T, NH, 1, HD}, {int32_t(n1), int32_t(n2)}, {}, 8);
  // copy the packed row's tokens into the two rows (row 1 holds sample 2 at positions 0..n2-1)
  auto place = [&](Vec& dst, const Vec& src, int64_t heads) {
    dst.assign(size_t(2 * T * heads * HD), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < heads * HD; ++i) {
        int64_t row = t < n1 ? t : T + (t - n1);
        dst[row * heads * HD + i] = src[t * heads * HD + i];
      }
  };
  place(split.q, packed.q, NH);
  place(split.k, packed.k, 1);
  place(split.v, packed.v, 1);
  std::vector<double> o1, l1, o2, l2;
  run_forward<double>(packed, o1, l1);
  run_forward<double>(split, o2, l2);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < NH * HD; ++i) {
      int64_t row = t < n1 ? t : T + (t - n1);
      EXPECT_NEAR(o1[t * NH * HD + i], o2[row * NH * HD + i], 1e-14);
    }
}

TEST(Attention, GradientCheckGqaWithPadding) {
  expect_gradients(make_case({2, 6, 4, 2, 8}, {6, 4}, {}, 10), 10000, 11);
}

TEST(Attention, GradientCheckPackedSamples) {
  const int64_t T = 9;
  expect_gradients(make_case({1, T, 2, 1, 8}, {}, packed_begin(T, {5, 4}), 12), 10000, 13);
}

TEST(Attention, GradientCheckAcrossTiles) {
  // T = 80: three query tiles and two key tiles; packing boundary at 40, padding after 75
  const int64_t T = 80;
  expect_gradients(make_case({1, T, 4, 2, 8}, {75}, packed_begin(T, {40, 35}), 14), 150, 15);
}

TEST(Attention, FloatMatchesDouble) {
  const int64_t T = 150;
  std::vector<int32_t> kvb = packed_begin(T, {90, 60});
  auto more = packed_begin(T, {T});
  kvb.insert(kvb.end(), more.begin(), more.end());
  Case c = make_case({2, T, 4, 2, 32}, {150, 120}, kvb, 16);
  Vec R = float_exact(randn(c.nq(), 17));
  Vec dq, dk, dv, out, lse;
  std::vector<float> dqf, dkf, dvf, outf, lsef;
  run_forward<double>(c, out, lse);
  run_forward<float>(c, outf, lsef);
  EXPECT_LT(rel_err(outf, out), kFloatTol);
  EXPECT_LT(rel_err(lsef, lse), kFloatTol);
  run_backward<double>(c, R, dq, dk, dv);
  run_backward<float>(c, R, dqf, dkf, dvf);
  EXPECT_LT(rel_err(dqf, dq), kFloatTol);
  EXPECT_LT(rel_err(dkf, dk), kFloatTol);
  EXPECT_LT(rel_err(dvf, dv), kFloatTol);
}

TEST(Attention, RejectsBadArguments) {
  std::vector<float> in(64, 0.5f), out(64), lse(8);
  auto fwd = [&](AttentionShape s, const int32_t* len, const int32_t* kvb) {
    attention_forward<float>(out.data(), lse.data(), in.data(), in.data(), in.data(), s, len, kvb);
  };
  EXPECT_THROW(fwd({1, 4, 3, 2, 8}, nullptr, nullptr), core::Error);  // 3 heads over 2 kv heads
  std::vector<int32_t> len = {5};
  EXPECT_THROW(fwd({1, 4, 2, 1, 8}, len.data(), nullptr), core::Error);  // length > T
  std::vector<int32_t> kvb = {0, 0, 3, 0};                                // query 2 cannot see itself
  EXPECT_THROW(fwd({1, 4, 2, 1, 8}, nullptr, kvb.data()), core::Error);
  len = {2};  // ...unless it is padding
  EXPECT_NO_THROW(fwd({1, 4, 2, 1, 8}, len.data(), kvb.data()));
}

namespace {
// Values in [-2, 2] from a seeded LCG, for the comparisons between attention implementations below.
void fill_uniform(std::initializer_list<std::vector<float>*> buffers, uint64_t seed) {
  for (auto* buf : buffers)
    for (auto& e : *buf) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      e = float(int64_t(seed >> 40) % 2001 - 1000) / 500.0f;
    }
}
}  // namespace

namespace {
// One attention problem with GQA, right padding (row 1 shorter) and packing (row 1 holds two samples).
struct Problem {
  AttentionShape s;
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> lengths, kv_begin;
  int64_t nq() const { return s.B * s.T * s.NH * s.HD; }
  int64_t nkv() const { return s.B * s.T * s.NKV * s.HD; }
};

Problem make_problem(AttentionShape s, int32_t len1, int64_t pack_at, uint64_t seed) {
  Problem p{s, {}, {}, {}, {}, {}, {}};
  p.q.resize(size_t(p.nq()));
  p.k.resize(size_t(p.nkv()));
  p.v.resize(size_t(p.nkv()));
  p.dout.resize(size_t(p.nq()));
  fill_uniform({&p.q, &p.k, &p.v, &p.dout}, seed);
  p.lengths.assign(size_t(s.B), int32_t(s.T));
  if (s.B > 1) p.lengths[1] = len1;
  p.kv_begin.assign(size_t(s.B * s.T), 0);
  if (s.B > 1)
    for (int64_t t = pack_at; t < s.T; ++t) p.kv_begin[size_t(s.T + t)] = int32_t(pack_at);
  return p;
}

struct Result {
  std::vector<float> o, lse, dq, dk, dv;
};

// Runs a forward and a backward kernel on p; every output starts at 7 so that an unwritten entry shows.
template <typename Fwd, typename Bwd>
Result run_problem(const Problem& p, Fwd fwd, Bwd bwd) {
  Result r{std::vector<float>(size_t(p.nq()), 7.f), std::vector<float>(size_t(p.s.B * p.s.NH * p.s.T), 7.f),
           std::vector<float>(size_t(p.nq()), 7.f), std::vector<float>(size_t(p.nkv()), 7.f),
           std::vector<float>(size_t(p.nkv()), 7.f)};
  fwd(r.o.data(), r.lse.data(), p.q.data(), p.k.data(), p.v.data(), p.s, p.lengths.data(), p.kv_begin.data());
  bwd(r.dq.data(), r.dk.data(), r.dv.data(), p.dout.data(), p.q.data(), p.k.data(), p.v.data(), r.o.data(),
      r.lse.data(), p.s, p.lengths.data(), p.kv_begin.data());
  return r;
}

double max_rel(const std::vector<float>& x, const std::vector<float>& y) {
  double d = 0, m = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    d = std::max(d, double(std::abs(x[i] - y[i])));
    m = std::max(m, double(std::abs(y[i])));
  }
  return d / std::max(m, 1e-30);
}

void expect_close(const Result& got, const Result& want, double tol_out, double tol_lse, double tol_grad) {
  EXPECT_LT(max_rel(got.o, want.o), tol_out) << "out";
  EXPECT_LT(max_rel(got.lse, want.lse), tol_lse) << "lse";
  EXPECT_LT(max_rel(got.dq, want.dq), tol_grad) << "dq";
  EXPECT_LT(max_rel(got.dk, want.dk), tol_grad) << "dk";
  EXPECT_LT(max_rel(got.dv, want.dv), tol_grad) << "dv";
}

// attention_forward / attention_backward: flash fp32, or the bf16 blocked kernels when p.s.bf16
Result run_default(const Problem& p) {
  return run_problem(
      p, [](auto... a) { attention_forward<float>(a...); }, [](auto... a) { attention_backward<float>(a...); });
}

Result run_blocked(const Problem& p, AttentionOperands ops, AttentionIsa isa = attention_best_isa()) {
  return run_problem(
      p, [ops, isa](auto... a) { attention_forward_blocked(isa, ops, a...); },
      [ops, isa](auto... a) { attention_backward_blocked(isa, ops, a...); });
}

// Shapes that reach every block geometry of the blocked kernels: 8 query heads per kv head (64-row
// blocks), 2 (128-row blocks) and 1; T not a multiple of the 64-key alignment; padding that ends
// inside a block and a whole block of padding; a packed sample boundary inside a block.
std::vector<Problem> blocked_problems() {
  return {make_problem({2, 300, 8, 1, 64}, 97, 130, 11), make_problem({2, 200, 4, 2, 32}, 70, 60, 12),
          make_problem({3, 130, 2, 2, 16}, 1, 65, 13)};
}
}  // namespace

// The AVX-512 copy (chosen at run time on CPUs that have it) computes what the AVX2 copy computes, up to
// the order of fp32 sums: forward, log-sum-exp and all three gradients, with GQA, right padding and
// packing. Skips where the CPU or the build has no AVX-512.
TEST(Attention, Avx512CopyMatchesAvx2Copy) {
  if (!attention_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU (or a clang build)";
  const Problem p = make_problem({2, 150, 8, 2, 64}, 97, 60, 12345);
  auto run = [&](AttentionIsa isa) {
    return run_problem(
        p, [isa](auto... a) { attention_forward_variant<float>(isa, a...); },
        [isa](auto... a) { attention_backward_variant<float>(isa, a...); });
  };
  expect_close(run(AttentionIsa::Avx512), run(AttentionIsa::Avx2), 1e-5, 1e-5, 1e-5);
}

// The blocked kernels with fp32 operands against the definition (naive softmax in double) ...
TEST(Attention, BlockedF32ForwardMatchesNaive) {
  std::vector<int32_t> kv_begin(400, 0);
  for (int64_t t = 60; t < 200; ++t) kv_begin[size_t(200 + t)] = 60;
  const Case c = make_case({2, 200, 4, 2, 32}, {200, 70}, kv_begin, 21);
  Vec want_out, want_lse;
  naive(c, want_out, want_lse);
  std::vector<float> q(c.q.begin(), c.q.end()), k(c.k.begin(), c.k.end()), v(c.v.begin(), c.v.end());
  std::vector<float> out(c.nq(), 7.f), lse(size_t(c.s.B * c.s.NH * c.s.T), 7.f);
  attention_forward_blocked(attention_best_isa(), AttentionOperands::F32, out.data(), lse.data(), q.data(), k.data(), v.data(), c.s,
                            c.len_ptr(), c.kvb_ptr());
  EXPECT_LT(rel_err(out, want_out), kFloatTol);
  EXPECT_LT(rel_err(lse, want_lse), kFloatTol);
}

// ... and against the flash kernels (whose gradients the finite-difference checks above pin down), on every
// block geometry: the same values up to the order of fp32 sums.
// Keys are taken a chunk at a time (online softmax across chunks in the forward): 512 keys (one chunk at
// these lengths), 64 and 128 (several, with the chunk boundaries inside blocks and packed samples).
TEST(Attention, BlockedF32MatchesFlash) {
  for (int64_t chunk : {512, 64, 128}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (const Problem& p : blocked_problems()) {
      SCOPED_TRACE("chunk=" + std::to_string(chunk) + " T=" + std::to_string(p.s.T) + " NH=" +
                   std::to_string(p.s.NH) + " NKV=" + std::to_string(p.s.NKV));
      expect_close(run_blocked(p, AttentionOperands::F32), run_default(p), 1e-5, 1e-5, 1e-5);
    }
    attention_blocked_key_chunk(before);
  }
  EXPECT_THROW(attention_blocked_key_chunk(100), core::Error);
}

// bf16 operands (what --bf16 training runs): within bf16's rounding of the fp32 result. Seven bits of
// mantissa: a relative error of 2^-8 per operand, averaged over sums of many terms.
TEST(Attention, Bf16BlockedCloseToF32) {
  for (int64_t chunk : {512, 64}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (const Problem& p : blocked_problems()) {
      SCOPED_TRACE("chunk=" + std::to_string(chunk) + " T=" + std::to_string(p.s.T) + " NH=" +
                   std::to_string(p.s.NH) + " NKV=" + std::to_string(p.s.NKV));
      const Result f32 = run_default(p), bf16 = run_blocked(p, AttentionOperands::Bf16);
      expect_close(bf16, f32, 2e-2, 1e-2, 3e-2);
      // and not trivially: bf16 rounding changed the values
      EXPECT_GT(max_rel(bf16.o, f32.o), 1e-6);
    }
    attention_blocked_key_chunk(before);
  }
}

// attention_forward / attention_backward with shape.bf16 run the bf16 blocked kernels where the CPU has a
// native bf16 matmul, and the fp32 flash kernels elsewhere (emulated bf16 products would be slower).
TEST(Attention, Bf16ShapeSelectsBf16OperandsWhereNative) {
  Problem p = blocked_problems()[1];
  const Result want = cpu::bf16_native_available() ? run_blocked(p, AttentionOperands::Bf16) : run_default(p);
  p.s.bf16 = true;
  const Result got = run_default(p);
  EXPECT_EQ(got.o, want.o);
  EXPECT_EQ(got.lse, want.lse);
  EXPECT_EQ(got.dq, want.dq);
  EXPECT_EQ(got.dk, want.dk);
  EXPECT_EQ(got.dv, want.dv);
}

// oneDNN's bf16 matmul (AMX / AVX512-BF16) and the widened sgemm path multiply the same bf16 values: equal
// up to the order of fp32 sums (and the odd P or dS element that rounds to a neighbouring bf16 value).
// Skips on CPUs without a native bf16 matmul, where the widened path is the only one.
TEST(Attention, Bf16BlockedNativeMatchesWidened) {
  if (!cpu::bf16_native_available()) GTEST_SKIP() << "no native bf16 matmul on this CPU";
  for (int64_t chunk : {512, 64}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (const Problem& p : blocked_problems()) {
      SCOPED_TRACE("chunk=" + std::to_string(chunk) + " T=" + std::to_string(p.s.T) + " NH=" +
                   std::to_string(p.s.NH) + " NKV=" + std::to_string(p.s.NKV));
      const Result native = run_blocked(p, AttentionOperands::Bf16);
      cpu::set_bf16_force_portable(true);
      const Result widened = run_blocked(p, AttentionOperands::Bf16);
      cpu::set_bf16_force_portable(false);
      expect_close(native, widened, 2e-3, 1e-4, 4e-3);
    }
    attention_blocked_key_chunk(before);
  }
  for (const auto& k : attention_blocked_native_kernels()) std::printf("bf16 attention product: %s\n", k.c_str());
}

// The blocked kernels' AVX-512 copy of the softmax and packing passes computes what the AVX2 copy does
// (same products), with either operand type and with several key chunks. Skips without AVX-512.
TEST(Attention, BlockedAvx512CopyMatchesAvx2Copy) {
  if (!attention_avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU (or a clang build)";
  for (int64_t chunk : {512, 64}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (const Problem& p : blocked_problems())
      for (AttentionOperands ops : {AttentionOperands::F32, AttentionOperands::Bf16}) {
        SCOPED_TRACE("chunk=" + std::to_string(chunk) + " T=" + std::to_string(p.s.T) + " NH=" +
                     std::to_string(p.s.NH) + (ops == AttentionOperands::Bf16 ? " bf16" : " f32"));
        // bf16: an fp32 sum in another order may round a P or dS element to the neighbouring bf16 value
        const double tol = ops == AttentionOperands::Bf16 ? 4e-3 : 1e-5;
        expect_close(run_blocked(p, ops, AttentionIsa::Avx512), run_blocked(p, ops, AttentionIsa::Avx2), tol, 1e-5,
                     tol);
      }
    attention_blocked_key_chunk(before);
  }
}

// The backward's two schedules compute the same gradients: one pass per (batch, kv head) when there are at
// least as many of those as threads (dq beside dk/dv), two passes otherwise. Chosen here through the thread
// count: one (batch, kv head) pair runs fused on 1 thread and in two passes on 2. (Not more threads than the
// machine's default: growing clang's OpenMP pool leaves allocations LeakSanitizer reports.)
TEST(Attention, FusedAndTwoPassBackwardAgree) {
  const AttentionShape s{1, 150, 4, 1, 32};
  const int64_t nq = s.B * s.T * s.NH * s.HD, nkv = s.B * s.T * s.NKV * s.HD;
  std::vector<float> q(static_cast<size_t>(nq)), k(static_cast<size_t>(nkv)), v(static_cast<size_t>(nkv)),
      dout(static_cast<size_t>(nq)), out(static_cast<size_t>(nq)), lse(static_cast<size_t>(s.B * s.NH * s.T));
  fill_uniform({&q, &k, &v, &dout}, 777);
  const std::vector<int32_t> lengths = {140};
  std::vector<int32_t> kv_begin(size_t(s.B * s.T), 0);
  for (int64_t t = 70; t < s.T; ++t) kv_begin[size_t(t)] = 70;  // row 0 packs two samples
  attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), s, lengths.data(), kv_begin.data());
  auto grads = [&](int threads) {
    core::set_num_threads(threads);
    std::vector<float> dq(static_cast<size_t>(nq), 7.f), dk(static_cast<size_t>(nkv), 7.f),
        dv(static_cast<size_t>(nkv), 7.f);  // 7: every element must be written
    attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                              lse.data(), s, lengths.data(), kv_begin.data());
    return std::vector<std::vector<float>>{dq, dk, dv};
  };
  const int before = core::num_threads();
  const auto fused = grads(1), two_pass = grads(2);
  core::set_num_threads(before);
  for (size_t i = 0; i < 3; ++i) {
    double d = 0, m = 0;
    for (size_t j = 0; j < fused[i].size(); ++j) {
      d = std::max(d, double(std::abs(fused[i][j] - two_pass[i][j])));
      m = std::max(m, double(std::abs(two_pass[i][j])));
    }
    EXPECT_LT(d / m, 1e-5) << "gradient " << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Sliding window (Mistral, Qwen2): query t sees keys t - window < s <= t (and s >= kv_begin), against the
// definition (naive() masks with Case::lo, which is that rule written out).

namespace {
AttentionShape windowed(AttentionShape s, int64_t window) {
  s.window = window;
  return s;
}
}  // namespace

TEST(AttentionWindow, ForwardMatchesNaive) {
  // T = 150 spans 5 query tiles and 3 key tiles: windows smaller than a tile (8), between tiles (40, 70), and
  // at least T (no effect); with packing (row 0: samples of 70, 45, 35) and padding (row 1: 100 tokens)
  const int64_t T = 150;
  auto kvb = packed_begin(T, {70, 45, 35});
  auto kvb1 = packed_begin(T, {T});
  kvb.insert(kvb.end(), kvb1.begin(), kvb1.end());
  for (int64_t w : {1, 8, 40, 70, 150, 400}) {
    SCOPED_TRACE("window " + std::to_string(w));
    expect_forward_matches_naive(make_case(windowed({2, T, 4, 2, 16}, w), {150, 100}, kvb, 30));
  }
  // a window of 1: every query sees itself only, so out = its own v row
  Case one = make_case(windowed({1, 9, 2, 1, 8}, 1), {}, {}, 31);
  std::vector<double> out, lse;
  run_forward<double>(one, out, lse);
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 8; ++i) EXPECT_NEAR(out[(t * 2 + h) * 8 + i], one.v[t * 8 + i], 1e-15);
}

TEST(AttentionWindow, ChangesTheResultOnlyBeyondTheWindow) {
  // rows t < window see every earlier key either way: identical there, different after
  Case full = make_case({1, 40, 2, 1, 8}, {}, {}, 32);
  Case win = full;
  win.s.window = 8;
  std::vector<double> of, lf, ow, lw;
  run_forward<double>(full, of, lf);
  run_forward<double>(win, ow, lw);
  for (int64_t t = 0; t < 40; ++t) {
    double d = 0;
    for (int64_t i = 0; i < 16; ++i) d = std::max(d, std::abs(of[t * 16 + i] - ow[t * 16 + i]));
    if (t < 8)
      EXPECT_EQ(d, 0.0) << t;
    else
      EXPECT_GT(d, 1e-6) << t;
  }
}

TEST(AttentionWindow, GradientCheck) {
  // window 5 within one tile; window 24 across the tiles of T = 80, with packing at 40 and padding after 75
  expect_gradients(make_case(windowed({2, 9, 4, 2, 8}, 5), {9, 7}, {}, 33), 10000, 34);
  const int64_t T = 80;
  expect_gradients(make_case(windowed({1, T, 4, 2, 8}, 24), {75}, packed_begin(T, {40, 35}), 35), 150, 36);
}

TEST(AttentionWindow, FloatMatchesDouble) {
  const int64_t T = 150;
  Case c = make_case(windowed({2, T, 4, 2, 32}, 37), {150, 120}, {}, 37);
  Vec R = float_exact(randn(c.nq(), 38));
  Vec dq, dk, dv, out, lse;
  std::vector<float> dqf, dkf, dvf, outf, lsef;
  run_backward<double>(c, R, dq, dk, dv);
  run_backward<float>(c, R, dqf, dkf, dvf);
  run_forward<double>(c, out, lse);
  run_forward<float>(c, outf, lsef);
  EXPECT_LT(rel_err(outf, out), kFloatTol);
  EXPECT_LT(rel_err(lsef, lse), kFloatTol);
  EXPECT_LT(rel_err(dqf, dq), kFloatTol);
  EXPECT_LT(rel_err(dkf, dk), kFloatTol);
  EXPECT_LT(rel_err(dvf, dv), kFloatTol);
}

// The blocked kernels (the bf16 path's, here with fp32 operands) honour the window: against the definition
// (forward) and the flash kernels (gradients), with the window shorter than a key chunk and spanning several.
TEST(AttentionWindow, BlockedMatchesNaiveAndFlash) {
  std::vector<int32_t> kv_begin(400, 0);
  for (int64_t t = 60; t < 200; ++t) kv_begin[size_t(200 + t)] = 60;
  for (int64_t w : {8, 100}) {
    SCOPED_TRACE("window " + std::to_string(w));
    const Case c = make_case(windowed({2, 200, 4, 2, 32}, w), {200, 170}, kv_begin, 39);
    Vec want_out, want_lse;
    naive(c, want_out, want_lse);
    std::vector<float> q(c.q.begin(), c.q.end()), k(c.k.begin(), c.k.end()), v(c.v.begin(), c.v.end());
    std::vector<float> out(c.nq(), 7.f), lse(size_t(c.s.B * c.s.NH * c.s.T), 7.f);
    attention_forward_blocked(attention_best_isa(), AttentionOperands::F32, out.data(), lse.data(), q.data(),
                              k.data(), v.data(), c.s, c.len_ptr(), c.kvb_ptr());
    EXPECT_LT(rel_err(out, want_out), kFloatTol);
    EXPECT_LT(rel_err(lse, want_lse), kFloatTol);
  }
  for (int64_t chunk : {512, 64}) {
    const int64_t before = attention_blocked_key_chunk(chunk);
    for (Problem p : blocked_problems())
      for (int64_t w : {8, 100}) {
        p.s.window = w;
        SCOPED_TRACE("chunk=" + std::to_string(chunk) + " T=" + std::to_string(p.s.T) + " window=" + std::to_string(w));
        expect_close(run_blocked(p, AttentionOperands::F32), run_default(p), 1e-5, 1e-5, 1e-5);
      }
    attention_blocked_key_chunk(before);
  }
}

// Decoding against a KV cache with a window: the rows of a full forward over the same tokens.
TEST(AttentionWindow, DecodeMatchesForward) {
  const int64_t T = 30, NH = 4, NKV = 2, HD = 8;
  for (int64_t w : {0, 1, 7, 30}) {
    SCOPED_TRACE("window " + std::to_string(w));
    Case c = make_case(windowed({1, T, NH, NKV, HD}, w), {}, {}, 40);
    Vec want, lse;
    naive(c, want, lse);
    // the last 5 tokens fed at once after 25 cached ones, and the last one alone after 29
    for (int64_t p0 : {25, 29}) {
      const int64_t n = T - p0;
      Vec out(size_t(n * NH * HD));
      attention_decode<double>(out.data(), c.q.data() + p0 * NH * HD, c.k.data(), c.v.data(), n, p0, NH, NKV, HD, w);
      Vec ref(want.begin() + p0 * NH * HD, want.end());
      EXPECT_LT(rel_err(out, ref), 1e-13);
    }
  }
  std::vector<float> x(64, 1.f);
  EXPECT_THROW(attention_decode<float>(x.data(), x.data(), x.data(), x.data(), 1, 0, 1, 1, 8, -1), core::Error);
}

TEST(AttentionWindow, RejectsNegativeWindow) {
  std::vector<float> in(64, 0.5f), out(64), lse(8);
  EXPECT_THROW(attention_forward<float>(out.data(), lse.data(), in.data(), in.data(), in.data(),
                                        windowed({1, 4, 2, 1, 8}, -1), nullptr, nullptr),
               core::Error);
}
