// The 16-lane AVX-512 helpers (kernels/cpu/vec512.h) against the scalar ones they stand for (kernels/cpu/common.h):
// the same bits, so the attention's AVX-512 row passes form the values the portable passes would.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/common.h"
#include "kernels/cpu/vec512.h"

using namespace zerolora::kernels;

#ifdef ZL_VEC512
namespace {

// The helpers need only the CPU's instructions (not the AVX-512 attention copy, which GCC builds and clang does not).
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
#define SKIP_WITHOUT_AVX512() \
  if (!cpu_has_avx512()) GTEST_SKIP() << "this CPU has no AVX-512 (F, BW, VL, DQ)"

ZL_AVX512_FN void exp_of(const float* x, float* y) { _mm512_storeu_ps(y, cpu::exp16(_mm512_loadu_ps(x))); }
ZL_AVX512_FN void bf16_of(const float* x, uint16_t* y) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), cpu::to_bf16_16(_mm512_loadu_ps(x)));
}
ZL_AVX512BF16_FN void bf16_native_of(const float* x, uint16_t* y) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), cpu::to_bf16_16_native(_mm512_loadu_ps(x)));
}
ZL_AVX512_FN uint16_t lanes(int32_t j, int32_t a, int32_t z) { return cpu::lanes_in16(j, a, z); }

// The floats whose bits lie in [from, to) at the given stride, 16 at a time, through same(x) (which compares the
// 16-lane helper with its scalar twin); the number of lanes compared, or -1 at the first difference.
template <typename Same>
int64_t compare_range(uint32_t from, uint32_t to, uint32_t step, Same same) {
  int64_t n = 0;
  float x[16];
  for (uint64_t u = from; u < to; u += uint64_t(step) * 16) {
    for (int i = 0; i < 16; ++i) x[i] = std::bit_cast<float>(uint32_t(u + uint64_t(i) * step));
    if (!same(x)) return -1;
    n += 16;
  }
  return n;
}

TEST(Vec512, ExpEqualsTheScalarExpBitForBit) {
  SKIP_WITHOUT_AVX512();
  auto same = [](const float* x) {
    float y[16];
    exp_of(x, y);
    for (int i = 0; i < 16; ++i) {
      const float want = cpu::exp_fast(x[i]);
      if (std::bit_cast<uint32_t>(y[i]) != std::bit_cast<uint32_t>(want)) {
        ADD_FAILURE() << "exp(" << x[i] << ") = " << y[i] << ", scalar " << want;
        return false;
      }
    }
    return true;
  };
  // the floats of (-128, 128) (exp is 0 below -87.3 and saturates above 88.4) at a stride of 37 bit patterns (60
  // million of them: every binade, each with 200,000+ mantissas; the stride 1 run, 2.2 billion, also passed), a
  // stride of 127 through the rest of each sign (the clamps), then the special values
  EXPECT_GT(compare_range(0x00000000u, 0x43000000u, 37, same), 0);
  EXPECT_GT(compare_range(0x80000000u, 0xc3000000u, 37, same), 0);
  EXPECT_GT(compare_range(0x43000000u, 0x7f800000u, 127, same), 0);
  EXPECT_GT(compare_range(0xc3000000u, 0xff800000u, 127, same), 0);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  float specials[16] = {inf, -inf, nan, -nan, 0.0f, -0.0f, cpu::kExpHi, cpu::kExpLo, 88.0f, 88.5f, -87.0f,
                        -87.5f, 1e-45f, -1e-45f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  EXPECT_TRUE(same(specials));
}

TEST(Vec512, Bf16RoundingEqualsTheScalarRoundingBitForBit) {
  SKIP_WITHOUT_AVX512();
  auto same = [](const float* x) {
    uint16_t y[16];
    bf16_of(x, y);
    for (int i = 0; i < 16; ++i) {
      const auto want = uint16_t(std::bit_cast<uint32_t>(cpu::round_bf16(x[i])) >> 16);
      if (y[i] != want) {
        ADD_FAILURE() << "bf16(" << std::hex << std::bit_cast<uint32_t>(x[i]) << ") = " << y[i] << ", scalar " << want;
        return false;
      }
    }
    return true;
  };
  // all 2^32 bit patterns at a stride of 13 (every exponent, ties, NaNs and infinities among them), then the
  // patterns around every rounding tie of one binade
  EXPECT_GT(compare_range(0x00000000u, 0xfffffff0u, 13, same), 0);
  EXPECT_GT(compare_range(0x3f800000u, 0x3f900000u, 1, same), 0);
  float specials[16];
  const uint32_t bits[16] = {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffffffffu, 0x00000001u,
                             0x80000001u, 0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x7f7fffffu, 0xff7fffffu,
                             0x00000000u, 0x80000000u, 0x3f800000u, 0x7fbfffffu};
  for (int i = 0; i < 16; ++i) specials[i] = std::bit_cast<float>(bits[i]);
  EXPECT_TRUE(same(specials));
}

TEST(Vec512, NativeBf16RoundingEqualsTheScalarRoundingButForSubnormals) {
  if (!cpu_has_avx512() || !__builtin_cpu_supports("avx512bf16")) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  auto same = [](const float* x) {
    uint16_t y[16];
    bf16_native_of(x, y);
    for (int i = 0; i < 16; ++i) {
      const uint32_t u = std::bit_cast<uint32_t>(x[i]);
      const bool subnormal = (u & 0x7f800000u) == 0 && (u & 0x007fffffu) != 0;
      const auto want = subnormal ? uint16_t((u >> 16) & 0x8000u)
                                  : uint16_t(std::bit_cast<uint32_t>(cpu::round_bf16(x[i])) >> 16);
      if (y[i] != want) {
        ADD_FAILURE() << "bf16(" << std::hex << u << ") = " << y[i] << ", want " << want;
        return false;
      }
    }
    return true;
  };
  EXPECT_GT(compare_range(0x00000000u, 0xfffffff0u, 13, same), 0);
  EXPECT_GT(compare_range(0x3f800000u, 0x3f900000u, 1, same), 0);
}

TEST(Vec512, LaneMaskIsTheHalfOpenRange) {
  SKIP_WITHOUT_AVX512();
  for (int32_t j : {0, 16, 48})
    for (int32_t a = -20; a < 70; a += 3)
      for (int32_t z = -5; z < 80; z += 7) {
        uint16_t want = 0;
        for (int i = 0; i < 16; ++i)
          if (j + i >= a && j + i < z) want |= uint16_t(1u << i);
        ASSERT_EQ(lanes(j, a, z), want) << "j " << j << " a " << a << " z " << z;
      }
}

}  // namespace
#endif
