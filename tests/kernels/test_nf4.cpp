// NF4 + double quantisation against tools/nf4_reference.py's goldens (bit for bit), the code book and
// dynamic map, the round-trip error bound, and the tiled NF4 linear layers against the dense linear layers
// on the dequantised weight.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

using namespace zerolora;
using namespace zerolora::kernels;
using namespace zerolora::kernels::test;
using core::DType;
using core::Tensor;

namespace {

const std::string kGoldenDir = std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/nf4/";

template <typename T>
std::vector<T> read_raw(const std::string& name) {
  std::ifstream f(kGoldenDir + name, std::ios::binary | std::ios::ate);
  EXPECT_TRUE(f.good()) << "missing golden " << kGoldenDir + name;
  const auto bytes = size_t(f.tellg());
  std::vector<T> v(bytes / sizeof(T));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(bytes));
  return v;
}

nlohmann::json manifest() {
  std::ifstream f(kGoldenDir + "manifest.json");
  return nlohmann::json::parse(f);
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Bitwise equality of float vectors (so -0 vs 0 and NaN payloads count), reporting the first mismatch.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (bits(got[i]) != bits(want[i])) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i];
      return;
    }
}

uint8_t code_of(const std::vector<uint8_t>& packed, int64_t e) {
  return (e & 1) ? packed[size_t(e / 2)] & 15 : packed[size_t(e / 2)] >> 4;
}

std::vector<float> random_weight(int64_t N, int64_t K, uint64_t seed, double scale = 0.02) {
  return to_float(randn(size_t(N * K), seed, scale));
}

// The dense reference: the dequantised weight (rounded to bf16 for a BF16 compute dtype) as a FrozenWeight.
FrozenWeight dense_weight(const Nf4Weight& q) {
  Tensor w = Tensor::empty(DType::F32, {q.N, q.K});
  nf4_dequantize(q, w.data<float>());
  Tensor bias;
  if (!q.bias.empty()) {
    bias = Tensor::empty(DType::F32, {q.N});
    std::copy(q.bias.begin(), q.bias.end(), bias.data<float>());
  }
  return FrozenWeight::make(q.compute_dtype == DType::BF16 ? w.to(DType::BF16) : w, bias);
}

struct TilingGuard {  // restores the global tiling after a test changed it
  Nf4Tiling saved = nf4_tiling();
  ~TilingGuard() { nf4_tiling() = saved; }
};

}  // namespace

TEST(Nf4CodeBook, IsExactlyTheSixteenSpecConstants) {
  const double spec[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                           0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                           0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(double(nf4_code()[size_t(i)]), spec[i]) << i;
  const auto golden = read_raw<float>("nf4_code.f32");
  expect_same_bits(std::vector<float>(nf4_code().begin(), nf4_code().end()), golden, "nf4_code");
}

TEST(Nf4CodeBook, QuantisesOnBitsandbytesMidpointThresholds) {
  // one block whose absmax is 1, so the normalised value is the weight itself: a value on a midpoint takes
  // the lower code (bitsandbytes' `x > t`), the next float above it the upper one
  const float thresholds[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
                                -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
                                -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
                                0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                                0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
  std::vector<float> w(64, 0.0f);
  w[0] = 1.0f;
  for (int j = 0; j < 15; ++j) {
    w[size_t(2 + 2 * j)] = thresholds[j];
    w[size_t(3 + 2 * j)] = std::nextafter(thresholds[j], 2.0f);
  }
  const Nf4Weight q = nf4_quantize(w.data(), 1, 64, /*double_quant=*/false);
  EXPECT_EQ(code_of(q.packed, 0), 15);
  EXPECT_EQ(code_of(q.packed, 1), 7);  // exact zero
  for (int j = 0; j < 15; ++j) {
    EXPECT_EQ(code_of(q.packed, 2 + 2 * j), j) << "on threshold " << j;
    EXPECT_EQ(code_of(q.packed, 3 + 2 * j), j + 1) << "above threshold " << j;
  }
}

TEST(Nf4DynamicMap, MatchesBitsandbytesGoldenAndItsConstruction) {
  const auto& map = nf4_dynamic_map();
  expect_same_bits(std::vector<float>(map.begin(), map.end()), read_raw<float>("dynamic_map.f32"), "dynamic_map");
  // create_dynamic_map(signed, 7 exponent bits): decade i (10^(i-6)) holds the 2^i means of
  // linspace(0.1, 1, 2^i + 1), with both signs, plus 0 and 1; computed exactly here, within 2 fp32 ulp
  std::vector<double> exact = {0.0, 1.0};
  for (int i = 0; i < 7; ++i) {
    const int n = (1 << i) + 1;
    for (int j = 0; j + 1 < n; ++j) {
      const double lo = 0.1 + 0.9 * j / (n - 1), hi = 0.1 + 0.9 * (j + 1) / (n - 1);
      const double v = std::pow(10.0, i - 6) * (lo + hi) / 2;
      exact.push_back(v);
      exact.push_back(-v);
    }
  }
  std::sort(exact.begin(), exact.end());
  ASSERT_EQ(exact.size(), 256u);
  for (size_t k = 0; k < 256; ++k) {
    const double ulp = std::abs(double(std::nextafter(map[k], 2.0f)) - double(map[k]));
    EXPECT_LE(std::abs(double(map[k]) - exact[k]), 2 * ulp) << k;
    if (k) {
      EXPECT_LT(map[k - 1], map[k]) << k;
    }
  }
  EXPECT_EQ(map[127], 0.0f);
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_NEAR(map[0], -0.99296875, 1e-7);
}

// Every golden case: bit-identical packed codes, absmax codes, absmax2, offset and dequantised values with
// double quantisation; without it the fp32 absmax and the same codes.
TEST(Nf4Golden, QuantiseAndDequantiseBitForBit) {
  const auto m = manifest();
  ASSERT_EQ(m["blocksize"], kNf4BlockSize);
  ASSERT_EQ(m["nested_blocksize"], kNf4NestedBlockSize);
  ASSERT_GE(m["cases"].size(), 4u);
  for (const auto& c : m["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const int64_t N = c["N"], K = c["K"];
    const auto& files = c["files"];
    const auto input = read_raw<float>(files["input"]);
    ASSERT_EQ(int64_t(input.size()), N * K);

    const Nf4Weight q = nf4_quantize(input.data(), N, K);
    q.validate("golden");
    EXPECT_EQ(q.packed, read_raw<uint8_t>(files["packed"]));
    EXPECT_EQ(q.absmax_q, read_raw<uint8_t>(files["absmax_q"]));
    expect_same_bits(q.absmax2, read_raw<float>(files["absmax2"]), "absmax2");
    EXPECT_EQ(bits(q.absmax_offset), uint32_t(c["absmax_offset_bits"]));
    std::vector<float> deq(size_t(N * K));
    nf4_dequantize(q, deq.data());
    expect_same_bits(deq, read_raw<float>(files["dequant"]), "dequant");

    // row blocks, fp32 and bf16, equal the matching slice of the whole
    for (int64_t r0 = 0; r0 < N; r0 += 3) {
      const int64_t rows = std::min<int64_t>(2, N - r0);
      std::vector<float> part(size_t(rows * K));
      std::vector<uint16_t> part16(size_t(rows * K));
      nf4_dequantize_rows(q, r0, rows, part.data());
      nf4_dequantize_rows_bf16(q, r0, rows, part16.data());
      for (int64_t i = 0; i < rows * K; ++i) {
        ASSERT_EQ(bits(part[size_t(i)]), bits(deq[size_t(r0 * K + i)])) << "row " << r0 << " elem " << i;
        ASSERT_EQ(part16[size_t(i)], core::f32_to_bf16(deq[size_t(r0 * K + i)])) << "row " << r0 << " elem " << i;
      }
    }

    const Nf4Weight plain = nf4_quantize(input.data(), N, K, /*double_quant=*/false);
    plain.validate("golden, no double quant");
    EXPECT_EQ(plain.packed, q.packed);
    const auto absmax = read_raw<float>(files["absmax"]);
    expect_same_bits(plain.absmax, absmax, "absmax");
    std::vector<float> deq_plain(size_t(N * K)), want_plain(size_t(N * K));
    nf4_dequantize(plain, deq_plain.data());
    for (int64_t e = 0; e < N * K; ++e)
      want_plain[size_t(e)] = nf4_code()[code_of(plain.packed, e)] * absmax[size_t(e / kNf4BlockSize)];
    expect_same_bits(deq_plain, want_plain, "dequant without double quant");
  }
}

TEST(Nf4Golden, ZeroBlockKeepsBitsandbytesCodeZero) {
  // an all-zero block normalises 0 * (1/0) = NaN, which bitsandbytes' kernels map to code 0 (-1.0); the
  // dequantised block is then -absmax', the (small) double-quantisation error of a zero absmax
  std::vector<float> w = random_weight(2, 128, 5);
  std::fill(w.begin() + 64, w.begin() + 128, 0.0f);
  const Nf4Weight q = nf4_quantize(w.data(), 2, 128);
  for (int64_t e = 64; e < 128; ++e) EXPECT_EQ(code_of(q.packed, e), 0);
  std::vector<float> deq(256);
  nf4_dequantize(q, deq.data());
  EXPECT_EQ(deq[64], -q.block_absmax(1));
  EXPECT_LT(std::abs(deq[64]), 0.01 * q.absmax2[0]);
  const Nf4Weight plain = nf4_quantize(w.data(), 2, 128, false);
  std::vector<float> deq_plain(256);
  nf4_dequantize(plain, deq_plain.data());
  for (int64_t e = 64; e < 128; ++e) EXPECT_EQ(deq_plain[size_t(e)], 0.0f);
}

TEST(Nf4, RoundTripErrorBound) {
  const int64_t N = 96, K = 200;  // 300 blocks: two nested blocks, K not a multiple of 64
  std::vector<float> w = random_weight(N, K, 11);
  for (int64_t k = 0; k < K; ++k) w[size_t(5 * K + k)] *= 40.0f;  // an outlier row
  const Nf4Weight q = nf4_quantize(w.data(), N, K);
  std::vector<float> deq(size_t(N * K));
  nf4_dequantize(q, deq.data());
  // |w - w'| <= absmax * (largest half gap of the code book) + |absmax - absmax'|, and the double
  // quantisation error is within half the largest gap of the dynamic map (0.9/64 in the top decade)
  // times absmax2
  const double half_gap = (1.0 - 0.6961928009986877) / 2;
  double sq = 0, sq_w = 0;
  for (int64_t b = 0; b < q.num_blocks(); ++b) {
    const int64_t e0 = b * kNf4BlockSize, e1 = std::min(N * K, e0 + kNf4BlockSize);
    double a = 0;
    for (int64_t e = e0; e < e1; ++e) a = std::max(a, double(std::abs(w[size_t(e)])));
    const double a_deq = q.block_absmax(b);
    EXPECT_LE(std::abs(a - a_deq), 0.00704 * q.absmax2[size_t(b / kNf4NestedBlockSize)] + 1e-6 * a) << "block " << b;
    for (int64_t e = e0; e < e1; ++e) {
      const double err = std::abs(double(w[size_t(e)]) - double(deq[size_t(e)]));
      ASSERT_LE(err, a * half_gap * (1 + 1e-6) + std::abs(a - a_deq) + 1e-7) << "element " << e;
      sq += err * err;
      sq_w += double(w[size_t(e)]) * double(w[size_t(e)]);
    }
  }
  // NF4 on normal data: relative RMS error about 0.1 (reported by the run; a gross bug gives ~1)
  const double rel_rms = std::sqrt(sq / sq_w);
  EXPECT_LT(rel_rms, 0.12);
  EXPECT_GT(rel_rms, 0.02);
  RecordProperty("relative_rms_error", std::to_string(rel_rms));
}

TEST(Nf4, BytesPerParameter) {
  const int64_t N = 256, K = 2048;  // 8192 blocks, 32 nested blocks
  std::vector<float> w = random_weight(N, K, 3);
  const Nf4Weight q = nf4_quantize(w.data(), N, K);
  EXPECT_EQ(q.storage_bytes(), N * K / 2 + 8192 + 4 * 32 + 4);
  EXPECT_NEAR(q.bytes_per_param(), 0.5 + 1.0 / 64 + 4.0 / (64 * 256), 1e-5);  // 0.5157
  const Nf4Weight plain = nf4_quantize(w.data(), N, K, false);
  EXPECT_DOUBLE_EQ(plain.bytes_per_param(), 0.5 + 4.0 / 64);
}

TEST(Nf4, RefusesNonFiniteWeightsAndInconsistentSizes) {
  std::vector<float> w = random_weight(3, 50, 4);
  w[2 * 50 + 7] = std::numeric_limits<float>::quiet_NaN();
  try {
    nf4_quantize(w.data(), 3, 50);
    ADD_FAILURE() << "NaN accepted";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 7]"), std::string::npos) << e.what();
  }
  w[2 * 50 + 7] = 0.0f;
  Nf4Weight q = nf4_quantize(w.data(), 3, 50);
  EXPECT_NO_THROW(q.validate("w"));
  Nf4Weight bad = q;
  bad.packed.pop_back();
  EXPECT_THROW(bad.validate("w"), core::Error);
  bad = q;
  bad.absmax2.push_back(1.0f);
  EXPECT_THROW(bad.validate("w"), core::Error);
  bad = q;
  bad.double_quant = false;  // no fp32 absmax
  EXPECT_THROW(bad.validate("w"), core::Error);
  bad = q;
  bad.bias.assign(2, 0.0f);
  EXPECT_THROW(bad.validate("w"), core::Error);
  bad = q;
  bad.compute_dtype = DType::F16;
  EXPECT_THROW(bad.validate("w"), core::Error);
  EXPECT_THROW(nf4_dequantize_rows(q, 2, 2, std::vector<float>(100).data()), core::Error);
}

// The tiled NF4 linear layers against the dense linear layers on the dequantised weight, F32 and BF16
// compute, with tiles small enough that several tiles and a partial last one are used.
TEST(Nf4Linear, ForwardAndBackwardMatchDenseOnTheDequantisedWeight) {
  TilingGuard guard;
  struct Shape { int64_t M, N, K, tile_elems; };
  for (Shape s : {Shape{5, 37, 100, 7 * 100}, Shape{33, 130, 64, 1 << 19}, Shape{17, 300, 192, 64 * 192}}) {
    for (DType compute : {DType::F32, DType::BF16}) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE("M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
                     " " + core::dtype_name(compute) + (with_bias ? " bias" : ""));
        nf4_tiling().tile_elems = s.tile_elems;
        std::vector<float> w = random_weight(s.N, s.K, uint64_t(s.N * 31 + s.K));
        Nf4Weight q = nf4_quantize(w.data(), s.N, s.K);
        q.compute_dtype = compute;
        if (with_bias) q.bias = to_float(randn(size_t(s.N), 77, 0.5));
        const FrozenWeight dense = dense_weight(q);
        const auto x = to_float(randn(size_t(s.M * s.K), 8));
        const auto g = to_float(randn(size_t(s.M * s.N), 9));

        std::vector<float> y(size_t(s.M * s.N), NAN), y_ref(size_t(s.M * s.N));
        nf4_linear_forward(y.data(), x.data(), q, s.M);
        linear_forward<float>(y_ref.data(), x.data(), dense, s.M);
        EXPECT_LT(rel_err(y, y_ref), 2e-6);

        const auto dx0 = to_float(randn(size_t(s.M * s.K), 10));
        std::vector<float> dx = dx0, dx_ref = dx0;
        nf4_linear_backward_input(dx.data(), g.data(), q, s.M);
        linear_backward_input<float>(dx_ref.data(), g.data(), dense, s.M);
        EXPECT_LT(rel_err(dx, dx_ref), 2e-6);
        // the += really adds: the product alone differs from dx0 by far more than rounding
        EXPECT_GT(rel_err(dx, dx0), 0.01);
      }
    }
  }
}

// --lora_bias with --q_lora: a bias on the FrozenWeight (the trained one, borrowed from the flat buffer) is added
// instead of the NF4 weight's own, the same bits as an NF4 weight that holds that bias itself.
TEST(Nf4Linear, FrozenWeightBiasReplacesTheNf4Bias) {
  const int64_t M = 9, N = 70, K = 128;
  std::vector<float> w = random_weight(N, K, 4242);
  Nf4Weight own = nf4_quantize(w.data(), N, K);
  own.bias = to_float(randn(size_t(N), 5, 0.5));
  Nf4Weight trained = own;
  trained.bias = to_float(randn(size_t(N), 6, 0.5));
  std::vector<float> b = trained.bias;
  FrozenWeight fw = FrozenWeight::make_nf4(std::make_shared<const Nf4Weight>(own));
  fw.bias = core::Tensor::borrow(DType::F32, {N}, b.data(), nullptr, core::Device::Cpu);
  const auto x = to_float(randn(size_t(M * K), 7));
  std::vector<float> y(size_t(M * N), NAN), want(size_t(M * N), NAN), own_y(size_t(M * N), NAN);
  linear_forward<float>(y.data(), x.data(), fw, M);
  nf4_linear_forward(want.data(), x.data(), trained, M);
  nf4_linear_forward(own_y.data(), x.data(), own, M);
  EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(y.data(), own_y.data(), y.size() * sizeof(float)), 0);
}

TEST(Nf4Linear, Bf16ComputeRoundsInputAndWeightAndPortableEqualsNative) {
  TilingGuard guard;
  const int64_t M = 9, N = 70, K = 130;
  std::vector<float> w = random_weight(N, K, 21);
  Nf4Weight q = nf4_quantize(w.data(), N, K);
  const auto x = to_float(randn(size_t(M * K), 22));
  // straight from the definition in double: bf16(x) . bf16(W')
  std::vector<float> deq(size_t(N * K));
  nf4_dequantize(q, deq.data());
  std::vector<double> want(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k)
        s += double(core::bf16_to_f32(core::f32_to_bf16(x[size_t(m * K + k)]))) *
             double(core::bf16_to_f32(core::f32_to_bf16(deq[size_t(n * K + k)])));
      want[size_t(m * N + n)] = s;
    }
  q.compute_dtype = DType::BF16;
  std::vector<float> y(size_t(M * N)), y_portable(size_t(M * N));
  nf4_linear_forward(y.data(), x.data(), q, M);
  nf4_tiling().bf16_force_portable = true;
  nf4_tiling().tile_elems = 3 * K;
  nf4_linear_forward(y_portable.data(), x.data(), q, M);
  EXPECT_LT(rel_err(y, want), 2e-6);
  EXPECT_LT(rel_err(y_portable, want), 2e-6);
  // and it is not the fp32 product: the bf16 rounding is visible
  q.compute_dtype = DType::F32;
  std::vector<float> y32(size_t(M * N));
  nf4_linear_forward(y32.data(), x.data(), q, M);
  EXPECT_GT(rel_err(y32, want), 1e-4);
}
