// NF4 quantisation with double quantisation (bitsandbytes' algorithm, deepspeed-peft-spec §5), its
// dequantisation, and linear layers through NF4 weights that dequantise one tile of W at a time into a
// reused thread-local buffer. tools/nf4_reference.py is the independent reference; the goldens it writes
// (tests/golden/nf4/) must match bit for bit.
#include "kernels/nf4.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

namespace zerolora::kernels {

namespace {

// spec §5 (and bitsandbytes' dDequantizeNF4), index = 4-bit code
constexpr std::array<float, 16> kNf4Code = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};

// bitsandbytes builds its dynamic map at run time with torch.linspace(0.1, 1, n) in fp32 (spec: 7 decades
// 10^-6..10^0, 2^i interval means in decade i, both signs, then 0 and 1.0, sorted). The last bit of a
// few entries depends on how torch's CPU kernel evaluates linspace (vector width, FMA), so the values are
// written out here as torch 1.13's AVX2 kernel gives them (tools/nf4_reference.py --print-cpp-table), and
// test_nf4 checks them against that golden and against the exact construction to 2 ulp. A checkpoint
// stores the map it used (nested_quant_map), so a loader must take that one, not this.
constexpr std::array<float, 256> kDynamicMap = {
    -0x1.fc6666p-1f, -0x1.f53332p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f, -0x1.df9998p-1f, -0x1.d86666p-1f,
    -0x1.d13334p-1f, -0x1.cap-1f, -0x1.c2ccccp-1f, -0x1.bb9998p-1f, -0x1.b46666p-1f, -0x1.ad3332p-1f,
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.979998p-1f, -0x1.906666p-1f, -0x1.893334p-1f, -0x1.82p-1f,
    -0x1.7acccep-1f, -0x1.73999ap-1f, -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56cccep-1f,
    -0x1.4f999ap-1f, -0x1.486666p-1f, -0x1.413334p-1f, -0x1.3ap-1f, -0x1.32ccccp-1f, -0x1.2b999ap-1f,
    -0x1.246668p-1f, -0x1.1d3334p-1f, -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.07999ap-1f, -0x1.006666p-1f,
    -0x1.f26668p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f, -0x1.b8ccccp-2f, -0x1.aa6664p-2f,
    -0x1.9cp-2f, -0x1.8d9998p-2f, -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626664p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f, -0x1.0cp-2f, -0x1.fb3334p-3f,
    -0x1.de6668p-3f, -0x1.c1999ap-3f, -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3332p-3f, -0x1.4e6666p-3f,
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f, -0x1.93d70ap-4f, -0x1.8851eap-4f,
    -0x1.7ccccep-4f, -0x1.7147aep-4f, -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb85p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f, -0x1.09999ap-4f, -0x1.fc28f4p-5f,
    -0x1.e51ebap-5f, -0x1.ce147ap-5f, -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c28ep-5f, -0x1.fd70a4p-6f, -0x1.cf5c26p-6f,
    -0x1.a147aep-6f, -0x1.733334p-6f, -0x1.451eb8p-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f, -0x1.e978d4p-8f, -0x1.c49ba6p-8f,
    -0x1.9fbe76p-8f, -0x1.7ae148p-8f, -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f,
    -0x1.78d5p-11f, -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f, -0x1.b43528p-19f,
    -0x1.27476ep-21f, 0x0p+0f, 0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f, 0x1.19ce0ap-12f, 0x1.8fc506p-12f,
    0x1.02de02p-11f, 0x1.3dd982p-11f, 0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f, 0x1.0c49bap-8f, 0x1.3126e8p-8f,
    0x1.56041ap-8f, 0x1.7ae148p-8f, 0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f, 0x1.d1eb86p-7f, 0x1.170a3ep-6f,
    0x1.451eb8p-6f, 0x1.733334p-6f, 0x1.a147aep-6f, 0x1.cf5c26p-6f, 0x1.fd70a4p-6f, 0x1.15c28ep-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f, 0x1.88f5c2p-5f, 0x1.ap-5f,
    0x1.b70a3ep-5f, 0x1.ce147ap-5f, 0x1.e51ebap-5f, 0x1.fc28f4p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f, 0x1.4eb85p-4f, 0x1.5a3d7p-4f,
    0x1.65c29p-4f, 0x1.7147aep-4f, 0x1.7ccccep-4f, 0x1.8851eap-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f, 0x1.6b3332p-3f, 0x1.88p-3f,
    0x1.a4ccccp-3f, 0x1.c1999ap-3f, 0x1.de6668p-3f, 0x1.fb3334p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f, 0x1.626664p-2f, 0x1.70ccccp-2f,
    0x1.7f3334p-2f, 0x1.8d9998p-2f, 0x1.9cp-2f, 0x1.aa6664p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26668p-2f, 0x1.006666p-1f, 0x1.07999ap-1f, 0x1.0eccccp-1f,
    0x1.16p-1f, 0x1.1d3334p-1f, 0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
    0x1.413334p-1f, 0x1.486666p-1f, 0x1.4f999ap-1f, 0x1.56cccep-1f, 0x1.5ep-1f, 0x1.653334p-1f,
    0x1.6c6668p-1f, 0x1.73999ap-1f, 0x1.7acccep-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.979998p-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3332p-1f, 0x1.b46666p-1f, 0x1.bb9998p-1f,
    0x1.c2ccccp-1f, 0x1.cap-1f, 0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df9998p-1f, 0x1.e6ccccp-1f,
    0x1.eep-1f, 0x1.f53332p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

// Decision thresholds: the float literals of bitsandbytes' dQuantizeNF4 tree, sorted. Each is the exact
// (double) midpoint of two code values, written as its shortest decimal. Four of them (indices 0, 8, 12,
// 14) lie exactly halfway between two floats: (code[j] + code[j+1]) * 0.5f rounds that tie to even, but the
// decimal literal is a hair off the tie and rounds to the other float, one ulp away. The literals are what
// bitsandbytes compares with, so they are used as written (the golden's zero_block case pins it).
constexpr std::array<float, 15> kNf4Thresholds = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

// the dynamic map's decision points, computed in fp32 as bitsandbytes' dQuantize does: (upper + val) * 0.5f
constexpr std::array<float, 255> make_dynamic_midpoints() {
  std::array<float, 255> m{};
  for (size_t j = 0; j < m.size(); ++j) m[j] = (kDynamicMap[j] + kDynamicMap[j + 1]) * 0.5f;
  return m;
}
constexpr std::array<float, 255> kDynamicMidpoints = make_dynamic_midpoints();

// Nearest NF4 code of a normalised value: the number of thresholds below x, so a value on a threshold
// takes the lower code (bitsandbytes' `x > t`), and NaN (0 * inf from an all-zero block) gives 0, as the
// bitsandbytes kernels do.
inline uint8_t nf4_index(float x) {
  int q = 0;
  for (float t : kNf4Thresholds) q += x > t;
  return uint8_t(q);
}

// Nearest value of the dynamic map, by the same rule (bitsandbytes' dQuantize binary search with
// midpoints picks the same index except on an exact midpoint tie). NaN -> 0.
inline uint8_t dynamic_index(float x) {
  return uint8_t(std::lower_bound(kDynamicMidpoints.begin(), kDynamicMidpoints.end(), x) -
                 kDynamicMidpoints.begin());
}

// fp32 a * b + c with the product rounded first, as bitsandbytes' two kernels do. GCC contracts a * b + c
// into one FMA even across statements (-ffp-contract=fast is its default under -std=gnu++), which changes
// the result by up to half an ulp of c: with c = the absmax mean and a * b close to -c, that is many ulps
// of the dequantised absmax. The empty asm makes the rounded product opaque, so it cannot be fused.
inline float mul_then_add(float a, float b, float c) {
  float product = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(product));
#else
  volatile float opaque = product;
  product = opaque;
#endif
  return product + c;
}

inline uint8_t code_at(const uint8_t* packed, int64_t e) {
  const uint8_t byte = packed[e >> 1];
  return (e & 1) ? byte & 0x0f : byte >> 4;
}

}  // namespace

const std::array<float, 16>& nf4_code() { return kNf4Code; }
const std::array<float, 256>& nf4_dynamic_map() { return kDynamicMap; }

Nf4Tiling& nf4_tiling() {
  static Nf4Tiling t;
  return t;
}

// ---- the weight -----------------------------------------------------------------------------------

float Nf4Weight::block_absmax(int64_t b) const {
  if (!double_quant) return absmax[size_t(b)];
  return mul_then_add(kDynamicMap[absmax_q[size_t(b)]], absmax2[size_t(b / kNf4NestedBlockSize)], absmax_offset);
}

int64_t Nf4Weight::storage_bytes() const {
  int64_t bytes = int64_t(packed.size());
  if (double_quant)
    bytes += int64_t(absmax_q.size()) + 4 * int64_t(absmax2.size()) + 4;
  else
    bytes += 4 * int64_t(absmax.size());
  return bytes;
}

void Nf4Weight::validate(const char* where) const {
  auto n = [](int64_t v) { return std::to_string(v); };
  core::check(N >= 0 && K >= 0, where, "negative NF4 weight shape [" + n(N) + ", " + n(K) + "]");
  const int64_t nb = num_blocks(), nested = (nb + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize;
  const std::string fix = "re-quantise the weight (the file is truncated or written with another block size)";
  core::check(int64_t(packed.size()) == (numel() + 1) / 2, where,
              n(int64_t(packed.size())) + " packed bytes for a [" + n(N) + ", " + n(K) + "] weight, expected " +
                  n((numel() + 1) / 2),
              fix);
  if (double_quant) {
    core::check(int64_t(absmax_q.size()) == nb, where,
                n(int64_t(absmax_q.size())) + " quantised absmax values, expected one per 64-block: " + n(nb), fix);
    core::check(int64_t(absmax2.size()) == nested, where,
                n(int64_t(absmax2.size())) + " nested absmax values, expected one per 256 blocks: " + n(nested), fix);
  } else {
    core::check(int64_t(absmax.size()) == nb, where,
                n(int64_t(absmax.size())) + " absmax values, expected one per 64-block: " + n(nb), fix);
  }
  core::check(bias.empty() || int64_t(bias.size()) == N, where,
              "bias has " + n(int64_t(bias.size())) + " values for " + n(N) + " outputs");
  core::check(compute_dtype == core::DType::F32 || compute_dtype == core::DType::BF16, where,
              std::string("compute dtype ") + core::dtype_name(compute_dtype) + " is not supported",
              "use F32 or BF16 (bnb_4bit_compute_dtype float32 or bfloat16)");
}

// ---- quantisation ---------------------------------------------------------------------------------

Nf4Weight nf4_quantize(const float* w, int64_t N, int64_t K, bool double_quant) {
  core::check(N >= 0 && K >= 0, "nf4_quantize",
              "negative shape [" + std::to_string(N) + ", " + std::to_string(K) + "]");
  Nf4Weight q;
  q.N = N;
  q.K = K;
  q.double_quant = double_quant;
  const int64_t n = q.numel(), nb = q.num_blocks();
  q.packed.assign(size_t((n + 1) / 2), 0);
  std::vector<float> absmax(static_cast<size_t>(nb));
  bool all_finite = true;

  // Blocks start at even elements, so each block owns whole bytes and blocks can run in parallel.
#pragma omp parallel for schedule(static) reduction(&& : all_finite) if (n > 65536)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t e0 = b * kNf4BlockSize, e1 = std::min(n, e0 + kNf4BlockSize);
    float a = 0.0f;
    bool finite = true;
    for (int64_t e = e0; e < e1; ++e) {
      a = std::max(a, std::fabs(w[e]));
      finite = finite && std::isfinite(w[e]);
    }
    all_finite = all_finite && finite;
    absmax[size_t(b)] = a;
    const float inv = 1.0f / a;  // bitsandbytes multiplies by the reciprocal (inf for a zero block)
    const int64_t e_end = std::min(e0 + kNf4BlockSize, (n + 1) & ~int64_t(1));  // + the pad of an odd count
    for (int64_t e = e0; e < e_end; e += 2) {
      const float x0 = w[e] * inv;
      const float x1 = (e + 1 < n ? w[e + 1] : 0.0f) * inv;
      q.packed[size_t(e >> 1)] = uint8_t(nf4_index(x0) << 4 | nf4_index(x1));
    }
  }
  if (!all_finite) {
    const int64_t e = std::find_if(w, w + n, [](float v) { return !std::isfinite(v); }) - w;
    throw core::Error("nf4_quantize", "weight element [" + std::to_string(e / K) + ", " + std::to_string(e % K) +
                                          "] is " + std::to_string(w[e]),
                      "the checkpoint holds non-finite weights; check the model file");
  }
  if (!double_quant) {
    q.absmax = std::move(absmax);
    return q;
  }

  // Double quantisation: the absmax values minus their mean, blockwise (256) to the 8-bit dynamic map.
  double sum = 0.0;
  for (float a : absmax) sum += a;
  q.absmax_offset = nb ? float(sum / double(nb)) : 0.0f;
  const int64_t nested = (nb + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize;
  q.absmax2.assign(size_t(nested), 0.0f);
  q.absmax_q.assign(size_t(nb), 0);
  for (int64_t j = 0; j < nested; ++j) {
    const int64_t b0 = j * kNf4NestedBlockSize, b1 = std::min(nb, b0 + kNf4NestedBlockSize);
    float a2 = 0.0f;
    for (int64_t b = b0; b < b1; ++b) a2 = std::max(a2, std::fabs(absmax[size_t(b)] - q.absmax_offset));
    q.absmax2[size_t(j)] = a2;
    const float inv2 = 1.0f / a2;
    for (int64_t b = b0; b < b1; ++b)
      q.absmax_q[size_t(b)] = dynamic_index((absmax[size_t(b)] - q.absmax_offset) * inv2);
  }
  return q;
}

// ---- dequantisation --------------------------------------------------------------------------------

namespace {

// out[0 .. 64) = the full 64-block b (32 packed bytes): 8 bytes -> 16 values per step, the 16-entry code
// book looked up with two 8-lane permutes.
inline void dequantize_full_block(const uint8_t* bytes, float absmax, float* out) {
#if defined(__AVX2__)
  const __m256 code_lo = _mm256_loadu_ps(kNf4Code.data()), code_hi = _mm256_loadu_ps(kNf4Code.data() + 8);
  const __m256 scale = _mm256_set1_ps(absmax);
  const __m128i low_nibbles = _mm_set1_epi8(0x0f);
  for (int step = 0; step < 4; ++step) {
    const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + 8 * step));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
    const __m128i lo = _mm_and_si128(packed, low_nibbles);
    const __m128i codes = _mm_unpacklo_epi8(hi, lo);  // element order: hi0 lo0 hi1 lo1 ...
    for (int half = 0; half < 2; ++half) {
      const __m256i idx = _mm256_cvtepu8_epi32(half ? _mm_srli_si128(codes, 8) : codes);
      const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // sign bit = code >= 8
      const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(code_lo, idx),
                                        _mm256_permutevar8x32_ps(code_hi, idx), upper);
      _mm256_storeu_ps(out + 16 * step + 8 * half, _mm256_mul_ps(v, scale));
    }
  }
#else
  for (int k = 0; k < 32; ++k) {
    out[2 * k] = kNf4Code[bytes[k] >> 4] * absmax;
    out[2 * k + 1] = kNf4Code[bytes[k] & 0x0f] * absmax;
  }
#endif
}

// out[e - e0] for the elements [e0, e1) that lie in block b.
inline void dequantize_block_part(const Nf4Weight& w, int64_t b, int64_t e0, int64_t e1, float* out) {
  const float absmax = w.block_absmax(b);
  if (e1 - e0 == kNf4BlockSize) return dequantize_full_block(w.packed.data() + (e0 >> 1), absmax, out);
  for (int64_t e = e0; e < e1; ++e) out[e - e0] = kNf4Code[code_at(w.packed.data(), e)] * absmax;
}

enum class Rounding { None, Bf16 };  // Bf16: the fp32 values rounded to bf16 (kept as fp32)

// out[i] = element e0 + i of the flattened weight, i in [0, e1 - e0), as T (float or bf16 bits).
template <typename T, Rounding R>
void dequantize_span(const Nf4Weight& w, int64_t e0, int64_t e1, T* out) {
  if (e1 <= e0) return;
  const int64_t b_first = e0 / kNf4BlockSize, b_last = (e1 - 1) / kNf4BlockSize;
#pragma omp parallel for schedule(static) if (e1 - e0 > 32768)
  for (int64_t b = b_first; b <= b_last; ++b) {
    const int64_t s = std::max(e0, b * kNf4BlockSize), t = std::min(e1, (b + 1) * kNf4BlockSize);
    if constexpr (std::is_same_v<T, float> && R == Rounding::None) {
      dequantize_block_part(w, b, s, t, out + (s - e0));
    } else {
      float tmp[kNf4BlockSize];
      dequantize_block_part(w, b, s, t, tmp);
      for (int64_t i = 0; i < t - s; ++i) {
        if constexpr (std::is_same_v<T, float>)
          out[s - e0 + i] = cpu::round_bf16(tmp[i]);
        else
          out[s - e0 + i] = core::f32_to_bf16(tmp[i]);
      }
    }
  }
}

void check_rows(const Nf4Weight& w, int64_t row0, int64_t rows, const char* fn) {
  core::check(row0 >= 0 && rows >= 0 && row0 + rows <= w.N, fn,
              "rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows) + ") outside the weight's " +
                  std::to_string(w.N) + " rows");
}

}  // namespace

void nf4_dequantize(const Nf4Weight& w, float* out) {
  dequantize_span<float, Rounding::None>(w, 0, w.numel(), out);
}

void nf4_dequantize_rows(const Nf4Weight& w, int64_t row0, int64_t rows, float* out) {
  check_rows(w, row0, rows, "nf4_dequantize_rows");
  dequantize_span<float, Rounding::None>(w, row0 * w.K, (row0 + rows) * w.K, out);
}

void nf4_dequantize_rows_bf16(const Nf4Weight& w, int64_t row0, int64_t rows, uint16_t* out) {
  check_rows(w, row0, rows, "nf4_dequantize_rows_bf16");
  dequantize_span<uint16_t, Rounding::None>(w, row0 * w.K, (row0 + rows) * w.K, out);
}

// ---- linear layers ---------------------------------------------------------------------------------
//
// W is walked in tiles of whole rows [n0, n0 + nt): forward writes out[:, n0 : n0+nt] = inp tile^T,
// backward adds dout[:, n0 : n0+nt] tile to dinp. Three ways to multiply, decided per call:
//   F32 compute:                 fp32 tile, sgemm
//   BF16 compute, native bf16:   bf16 tile wrapped in a FrozenWeight, oneDNN's bf16 matmul (linear.cpp)
//   BF16 compute, no native:     tile rounded to bf16 but kept fp32, input rounded to bf16 once, sgemm
//                                (the same values as linear.cpp's portable bf16 path)

namespace {

thread_local std::vector<float> t_tile_f32;       // the dequantised tile
thread_local std::vector<uint16_t> t_tile_bf16;
thread_local std::vector<float> t_rounded_input;  // bf16-rounded inp / dout (portable bf16 path)
thread_local std::vector<float> t_scratch;        // contiguous [M, nt] slice for the oneDNN path

int64_t rows_per_tile(const Nf4Weight& w) {
  return std::clamp<int64_t>(nf4_tiling().tile_elems / std::max<int64_t>(w.K, 1), 1, std::max<int64_t>(w.N, 1));
}

const float* rounded_to_bf16(const float* x, int64_t n) {
  t_rounded_input.resize(size_t(n));
  float* r = t_rounded_input.data();
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) r[i] = cpu::round_bf16(x[i]);
  return r;
}

FrozenWeight bf16_tile_weight(const Nf4Weight& w, int64_t n0, int64_t nt) {
  t_tile_bf16.resize(size_t(nt * w.K));
  nf4_dequantize_rows_bf16(w, n0, nt, t_tile_bf16.data());
  return FrozenWeight::make(core::Tensor::borrow(core::DType::BF16, {nt, w.K}, t_tile_bf16.data(), nullptr));
}

const float* f32_tile(const Nf4Weight& w, int64_t n0, int64_t nt, bool round_bf16) {
  t_tile_f32.resize(size_t(nt * w.K));
  float* tile = t_tile_f32.data();
  if (round_bf16)
    dequantize_span<float, Rounding::Bf16>(w, n0 * w.K, (n0 + nt) * w.K, tile);
  else
    dequantize_span<float, Rounding::None>(w, n0 * w.K, (n0 + nt) * w.K, tile);
  return tile;
}

bool use_native_bf16(const Nf4Weight& w) {
  return w.compute_dtype == core::DType::BF16 && !nf4_tiling().bf16_force_portable &&
         cpu::bf16_native_available();
}

void check_linear(const Nf4Weight& w, const char* fn) {
  core::check(int64_t(w.packed.size()) == (w.numel() + 1) / 2 &&
                  (w.compute_dtype == core::DType::F32 || w.compute_dtype == core::DType::BF16),
              fn, "Nf4Weight not built by nf4_quantize() (or not validated after loading)",
              "call Nf4Weight::validate() on weights read from a file");
}

}  // namespace

void nf4_linear_forward(float* out, const float* inp, const Nf4Weight& w, int64_t M, const float* bias_override) {
  check_linear(w, "nf4_linear_forward");
  if (M <= 0 || w.N == 0) return;
  const int64_t N = w.N, K = w.K, tile_rows = rows_per_tile(w);
  const bool native = use_native_bf16(w), portable_bf16 = w.compute_dtype == core::DType::BF16 && !native;
  const float* x = portable_bf16 ? rounded_to_bf16(inp, M * K) : inp;
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t nt = std::min(tile_rows, N - n0);
    if (native) {
      t_scratch.resize(size_t(M * nt));
      linear_forward<float>(t_scratch.data(), inp, bf16_tile_weight(w, n0, nt), M);
      const float* s = t_scratch.data();
#pragma omp parallel for schedule(static) if (M * nt > 65536)
      for (int64_t m = 0; m < M; ++m) std::copy(s + m * nt, s + (m + 1) * nt, out + m * N + n0);
    } else {
      gemm<float>(false, true, M, nt, K, 1.0f, x, K, f32_tile(w, n0, nt, portable_bf16), K, 0.0f, out + n0, N);
    }
  }
  if (bias_override || !w.bias.empty()) {
    const float* bias = bias_override ? bias_override : w.bias.data();
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t m = 0; m < M; ++m)
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) out[m * N + n] += bias[n];
  }
}

void nf4_linear_backward_input(float* dinp, const float* dout, const Nf4Weight& w, int64_t M) {
  check_linear(w, "nf4_linear_backward_input");
  if (M <= 0 || w.N == 0 || w.K == 0) return;
  const int64_t N = w.N, K = w.K, tile_rows = rows_per_tile(w);
  const bool native = use_native_bf16(w), portable_bf16 = w.compute_dtype == core::DType::BF16 && !native;
  const float* g = portable_bf16 ? rounded_to_bf16(dout, M * N) : dout;
  for (int64_t n0 = 0; n0 < N; n0 += tile_rows) {
    const int64_t nt = std::min(tile_rows, N - n0);
    if (native) {
      // dout[:, n0 : n0+nt] made contiguous, then dinp += slice W_tile (oneDNN's sum post-op)
      t_scratch.resize(size_t(M * nt));
      float* s = t_scratch.data();
#pragma omp parallel for schedule(static) if (M * nt > 65536)
      for (int64_t m = 0; m < M; ++m) std::copy(dout + m * N + n0, dout + m * N + n0 + nt, s + m * nt);
      linear_backward_input<float>(dinp, s, bf16_tile_weight(w, n0, nt), M);
    } else {
      gemm<float>(false, false, M, K, nt, 1.0f, g + n0, N, f32_tile(w, n0, nt, portable_bf16), K, 1.0f, dinp, K);
    }
  }
}

}  // namespace zerolora::kernels
