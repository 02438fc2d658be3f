// AMX-BF16 GEMMs over the plain bf16 weight (see amx_gemm.h for the scheme).
//
// Tiles: 8 registers of 16 rows x 64 bytes. tdpbf16ps C[16x16 f32] += A[16 rows x 32 bf16] . B[16 pair-rows x
// 16 (bf16, bf16)]: C[i][j] += sum_p A[i][2p] B[p][2j] + A[i][2p+1] B[p][2j+1]. Each step here is a 2x2 block of
// C tiles (tmm0-3) from two A tiles (tmm4-5) and two B tiles (tmm6-7): 4 products per 4 tile loads.
#include "kernels/cpu/amx_gemm.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/error.h"

// GCC 12 reports the _mm512_undefined_* inside its own unpack/shuffle intrinsics as uninitialised (a false
// positive of the inlined headers), once per use of transpose16.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define ZL_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

namespace zerolora::kernels::cpu {

namespace {

constexpr long kArchReqXcompPerm = 0x1023;  // linux/arch/x86/include/uapi/asm/prctl.h
constexpr long kXfeatureXtiledata = 18;

std::atomic<bool> g_amx_enabled{true};

// Per-thread scratch (each OpenMP thread and each caller thread has its own; reused across calls so the step
// loop does not allocate). 64-byte aligned.
struct Scratch {
  std::unique_ptr<std::byte[], void (*)(void*)> p{nullptr, std::free};
  size_t cap = 0;
  void* get(size_t bytes) {
    if (bytes > cap) {
      cap = (bytes + 4095) & ~size_t(4095);
      p.reset(static_cast<std::byte*>(std::aligned_alloc(64, cap)));
    }
    return p.get();
  }
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

ZL_AMX_TARGET void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// In-register transpose of a 16x16 block of 32-bit lanes (r[i] = row i in, column i out).
ZL_AMX_TARGET inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // rows 4q..4q+3 now hold, per 128-bit lane L, columns 4L..4L+3 of input rows 4q..4q+3
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88);
    r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
    r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xdd);
  }
}

// 32 floats from src (only the first n < 32 when n is short; the rest read as 0) -> 32 bf16 (RNE) as 16 dwords
ZL_AMX_TARGET inline __m512i to_bf16x32(const float* src, int64_t n) {
  __m512 lo, hi;
  if (n >= 32) {
    lo = _mm512_loadu_ps(src);
    hi = _mm512_loadu_ps(src + 16);
  } else {
    const __mmask16 mlo = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    const __mmask16 mhi = n >= 16 ? __mmask16((1u << (n - 16)) - 1) : __mmask16(0);
    lo = _mm512_maskz_loadu_ps(mlo, src);
    hi = _mm512_maskz_loadu_ps(mhi, src + 16);
  }
  return __m512i(_mm512_cvtne2ps_pbh(hi, lo));
}

// Forward's B operand: x [M,K] f32 -> xp, per 16-row tile mt and k pair kk: 16 dwords (x[m][2kk], x[m][2kk+1])
// for m = 16 mt .. 16 mt + 15, i.e. xp + (mt * Kp/2 + kk) * 16 dwords. Rows >= M and columns >= K are zero.
ZL_AMX_TARGET void pack_x_vnni(uint32_t* xp, const float* x, int64_t M, int64_t K, int64_t Mp, int64_t Kp) {
  const int64_t mtiles = Mp / 16, kblocks = Kp / 32;
#pragma omp for schedule(static) collapse(2)
  for (int64_t mt = 0; mt < mtiles; ++mt)
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      __m512i r[16];
      const int64_t kn = std::min<int64_t>(32, K - kb * 32);
      for (int i = 0; i < 16; ++i) {
        const int64_t m = mt * 16 + i;
        r[i] = m < M ? to_bf16x32(x + m * K + kb * 32, kn) : _mm512_setzero_si512();
      }
      transpose16(r);  // r[kk] = the 16 rows' dword kk
      uint32_t* dst = xp + (mt * (Kp / 2) + kb * 16) * 16;
      for (int kk = 0; kk < 16; ++kk) _mm512_store_si512(dst + kk * 16, r[kk]);
    }
}

// Backward's A operand: dout [M,N] f32 -> bf16 rows of Np (zero-padded), Mp rows.
ZL_AMX_TARGET void pack_rows_bf16(uint16_t* dst, const float* src, int64_t M, int64_t N, int64_t Mp, int64_t Np) {
#pragma omp for schedule(static)
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t n = 0; n < Np; n += 32) {
      __m512i v = m < M ? to_bf16x32(src + m * N + n, std::min<int64_t>(32, N - n)) : _mm512_setzero_si512();
      _mm512_store_si512(dst + m * Np + n, v);
    }
}

// A 16x16 fp32 tile (row-major, 64-byte aligned) -> out rows (transposed when `transposed`), adding to out when
// `accumulate`; only rows < rows and columns < cols of the result are written.
ZL_AMX_TARGET inline void write_tile(float* out, int64_t ldo, const float* tile, int64_t rows, int64_t cols,
                                     bool transposed, bool accumulate) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(tile + i * 16);
  if (transposed) transpose16(r);
  const __mmask16 mask = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  for (int64_t i = 0; i < rows; ++i) {
    __m512 v = _mm512_castsi512_ps(r[i]);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out + i * ldo));
    _mm512_mask_storeu_ps(out + i * ldo, mask, v);
  }
}

// The 2x2-tile inner loop: C(tmm0..3) += A(2 tiles from a0/a1, stride lda) . B(2 tiles from b0/b1, stride 64),
// over `steps` k steps of 32; A advances 64 bytes, B 1024 bytes per step.
ZL_AMX_TARGET inline void kernel_2x2(const std::byte* a0, const std::byte* a1, int64_t lda, const std::byte* b0,
                                     const std::byte* b1, int64_t steps) {
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(4, a0 + s * 64, lda);
    _tile_loadd(6, b0 + s * 1024, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + s * 1024, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + s * 64, lda);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

ZL_AMX_TARGET inline void load_c(float* c, bool zero) {
  if (zero) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c + 256, 64);
    _tile_loadd(2, c + 512, 64);
    _tile_loadd(3, c + 768, 64);
  }
}

ZL_AMX_TARGET inline void store_c(float* c) {
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

// Tiles 0-3 = one 32 x 32 block: 32 rows of A from a (lda elements apart) times one 32-column panel of B in the
// tile unit's layout (pack_b_pairs'), over the whole reduction Kp; zeroed first. Tile t = 2 (m tile) + (n tile).
ZL_AMX_TARGET inline void block_product(const uint16_t* a, int64_t lda, const uint32_t* panel, int64_t Kp) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const std::byte* a0 = reinterpret_cast<const std::byte*>(a);
  const std::byte* b0 = reinterpret_cast<const std::byte*>(panel);
  kernel_2x2(a0, a0 + 16 * lda * 2, lda * 2, b0, b0 + (Kp / 2) * 64, Kp / 32);
}

// block_product's tiles into a row-major fp32 32 x 32 block whose rows are ld floats apart.
ZL_AMX_TARGET inline void store_block(float* c, int64_t ld) {
  _tile_stored(0, c, ld * 4);
  _tile_stored(1, c + 16, ld * 4);
  _tile_stored(2, c + 16 * ld, ld * 4);
  _tile_stored(3, c + 16 * ld + 16, ld * 4);
}

// Split `panels` into contiguous groups per thread: [begin, end) of thread t of nt.
void thread_range(int64_t panels, int t, int nt, int64_t& begin, int64_t& end) {
  const int64_t per = panels / nt, extra = panels % nt;
  begin = t * per + std::min<int64_t>(t, extra);
  end = begin + per + (t < extra ? 1 : 0);
}

}  // namespace

bool amx_supported() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx = (d & (1u << 22)) && (d & (1u << 24));  // amx_bf16, amx_tile
    const bool avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));  // f, bw, vl
    if (!amx || !avx512 || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

bool amx_gemm_in_use() {
  static const bool allowed = [] {
    const unsigned have = unsigned(dnnl::get_effective_cpu_isa()), amx = unsigned(dnnl::cpu_isa::avx512_core_amx);
    bool env_on = true;
    if (const char* v = std::getenv("ZEROLORA_AMX_GEMM")) {
      const std::string s(v);
      core::check(s == "0" || s == "1", "ZEROLORA_AMX_GEMM", "unknown value '" + s + "'",
                  "set 0 (frozen bf16 linears through oneDNN's matmul) or 1 (zerolora's AMX kernels, the default)");
      env_on = s == "1";
    }
    return env_on && (have & amx) == amx;
  }();
  return g_amx_enabled && allowed && amx_supported();
}

void set_amx_gemm_enabled(bool on) { g_amx_enabled = on; }

AmxBlocking& amx_blocking() {
  static AmxBlocking b;
  return b;
}

namespace {
void forward_pass(float* out, const float* x, const uint16_t* W, int64_t M, int64_t N, int64_t K, bool accumulate);
void backward_pass(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N, int64_t K);

int64_t rows_per_pass() { return std::max<int64_t>(32, amx_blocking().rows_per_pass / 32 * 32); }
}  // namespace

void amx_linear_forward(float* out, const float* x, const uint16_t* W, int64_t M, int64_t N, int64_t K,
                        bool accumulate) {
  const int64_t rows = rows_per_pass();
  for (int64_t m0 = 0; m0 < M; m0 += rows)
    forward_pass(out + m0 * N, x + m0 * K, W, std::min(rows, M - m0), N, K, accumulate);
}

void amx_linear_backward_input(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N,
                               int64_t K) {
  const int64_t rows = rows_per_pass();
  for (int64_t m0 = 0; m0 < M; m0 += rows)
    backward_pass(dinp + m0 * K, dout + m0 * N, W, std::min(rows, M - m0), N, K);
}

namespace {

// The body of the parallel region is a function of its own: clang 14 does not give OpenMP's outlined region
// the enclosing function's target attribute (AMX and AVX-512 intrinsics may not appear in the region itself).
ZL_AMX_TARGET void forward_pass_thread(float* out, const float* x, const uint16_t* W, int64_t M, int64_t N, int64_t K,
                                       bool accumulate, uint32_t* xp) {
  if (M <= 0 || N <= 0) return;
  const int64_t Mp = round_up(M, 32), Kp = round_up(std::max<int64_t>(K, 1), 32);
  const int64_t mblocks = Mp / 32, panels = (N + 31) / 32, ksteps = Kp / 32;
  const AmxBlocking blk = amx_blocking();
  const int64_t G = std::max<int64_t>(1, blk.panels_per_group);
  const int64_t kc = std::max<int64_t>(1, blk.k_chunk / 32);  // k steps per pass
  // W's rows are read in place when a 32-row panel and all K columns lie inside W; else a padded copy
  const bool k_exact = K % 32 == 0;
  pack_x_vnni(xp, x, M, K, Mp, Kp);  // ends with the omp for's barrier
  int64_t p0, p1;
  thread_range(panels, omp_get_thread_num(), omp_get_num_threads(), p0, p1);
  static thread_local Scratch acc_s, pad_s;
  float* acc = static_cast<float*>(acc_s.get(size_t(G * 2 * (Mp / 16)) * 1024));
  uint16_t* pad = nullptr;
  static thread_local std::vector<const std::byte*> a_panel;
  static thread_local std::vector<int64_t> a_ld;
  a_panel.resize(size_t(G));
  a_ld.resize(size_t(G));
  configure_tiles();
  for (int64_t g0 = p0; g0 < p1; g0 += G) {
    const int64_t gn = std::min(G, p1 - g0);
    for (int64_t k0 = 0; k0 < ksteps; k0 += kc) {
      const int64_t steps = std::min(kc, ksteps - k0);
      // the group's weight panels for this chunk: in place, or a zero-padded copy at an edge
      for (int64_t g = 0; g < gn; ++g) {
        const int64_t n0 = (g0 + g) * 32;
        if (k_exact && n0 + 32 <= N) {
          a_panel[g] = reinterpret_cast<const std::byte*>(W + n0 * K + k0 * 32);
          a_ld[g] = K * 2;
        } else {  // rows n0.. of this chunk into a zero-padded 32 x (steps*32) panel
          if (!pad) pad = static_cast<uint16_t*>(pad_s.get(size_t(G * 32 * kc * 32) * 2));
          const int64_t w = steps * 32;
          uint16_t* panel = pad + g * 32 * kc * 32;
          for (int64_t i = 0; i < 32; ++i) {
            uint16_t* d = panel + i * w;
            const int64_t n = n0 + i, kbeg = k0 * 32, kn = n < N ? std::clamp<int64_t>(K - kbeg, 0, w) : 0;
            if (kn > 0) std::memcpy(d, W + n * K + kbeg, size_t(kn) * 2);
            std::memset(d + kn, 0, size_t(w - kn) * 2);
          }
          a_panel[g] = reinterpret_cast<const std::byte*>(panel);
          a_ld[g] = w * 2;
        }
      }
      // B-stationary: one 32-row block of x (32 KiB at a 512 chunk) stays in L1 while the group's weight
      // panels stream past it from L2 (10-15 % faster than weight-stationary in bench runs)
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        const std::byte* b0 = reinterpret_cast<const std::byte*>(xp + ((2 * mb) * (Kp / 2) + k0 * 16) * 16);
        for (int64_t g = 0; g < gn; ++g) {
          float* c = acc + ((g * mblocks + mb) * 4) * 256;  // tiles (n-tile i, m-tile j) at (2i + j)
          load_c(c, k0 == 0);
          kernel_2x2(a_panel[g], a_panel[g] + 16 * a_ld[g], a_ld[g], b0, b0 + (Kp / 2) * 64, steps);
          store_c(c);
        }
      }
    }
    // acc tiles hold out^T: transpose into out, row block by row block (each row gets gn * 128 bytes)
    for (int64_t mb = 0; mb < mblocks; ++mb)
      for (int j = 0; j < 2; ++j)
        for (int64_t g = 0; g < gn; ++g)
          for (int i = 0; i < 2; ++i) {
            const int64_t n = (g0 + g) * 32 + i * 16, m = mb * 32 + j * 16;
            if (n >= N || m >= M) continue;
            write_tile(out + m * N + n, N, acc + ((g * mblocks + mb) * 4 + 2 * i + j) * 256,
                       std::min<int64_t>(16, M - m), std::min<int64_t>(16, N - n), true, accumulate);
          }
  }
  _tile_release();
}

ZL_AMX_TARGET void forward_pass(float* out, const float* x, const uint16_t* W, int64_t M, int64_t N, int64_t K,
                                bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int64_t Mp = round_up(M, 32), Kp = round_up(std::max<int64_t>(K, 1), 32);
  static thread_local Scratch xs;
  uint32_t* xp = static_cast<uint32_t*>(xs.get(size_t(Mp * Kp) * 2));
#pragma omp parallel
  forward_pass_thread(out, x, W, M, N, K, accumulate, xp);
}

// The group's 32-column weight panels over n steps s0..s0+steps, as B tiles: two weight rows' 16 columns
// interleaved per tile row (panel g, n step s, k-tile j at ((g nc + s) 2 + j) KiB of wv). A function of its own,
// not inline in backward_pass's parallel region: clang 14 does not give OpenMP's outlined region the enclosing
// function's target attribute, so AVX-512 values may not live in the region itself.
ZL_AMX_TARGET void interleave_weight_group(uint32_t* wv, const uint16_t* W, int64_t N, int64_t K, int64_t g0,
                                           int64_t gn, int64_t s0, int64_t steps, int64_t nc) {
  // interleave index: out[2j] = a[j], out[2j+1] = b[j] (a, b = two weight rows' 16 columns)
  alignas(64) static const uint16_t kInterleave[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx = _mm512_load_si512(kInterleave);
  // Row pair by row pair, all of the group's panels at once: each weight row's gn * 64 bytes are read in one
  // sequential run (the rows are K * 2 bytes apart; panel by panel, every 64-byte line of a row was a separate
  // trip to memory)
  for (int64_t s = 0; s < steps; ++s)
    for (int p = 0; p < 16; ++p) {
      const int64_t n = (s0 + s) * 32 + 2 * p;
      for (int64_t g = 0; g < gn; ++g) {
        const int64_t kcol = (g0 + g) * 32;
        const bool full_cols = kcol + 32 <= K;
        uint32_t* wg = wv + g * nc * 512;
        for (int j = 0; j < 2; ++j) {
          const int64_t k = kcol + 16 * j;
          __m256i r0 = _mm256_setzero_si256(), r1 = _mm256_setzero_si256();
          if (full_cols) {
            if (n < N) r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + n * K + k));
            if (n + 1 < N) r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + (n + 1) * K + k));
          } else {
            const int64_t cn = std::clamp<int64_t>(K - k, 0, 16);
            const __mmask16 m = __mmask16((1u << cn) - 1);
            if (n < N && cn) r0 = _mm256_maskz_loadu_epi16(m, W + n * K + k);
            if (n + 1 < N && cn) r1 = _mm256_maskz_loadu_epi16(m, W + (n + 1) * K + k);
          }
          __m512i v = _mm512_permutex2var_epi16(_mm512_castsi256_si512(r0), idx, _mm512_castsi256_si512(r1));
          _mm512_store_si512(wg + (2 * s + j) * 256 + p * 16, v);
        }
      }
    }
}

ZL_AMX_TARGET void backward_pass_thread(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N,
                                        int64_t K, uint16_t* dp) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int64_t Mp = round_up(M, 32), Np = round_up(N, 32);
  const int64_t mblocks = Mp / 32, panels = (K + 31) / 32, nsteps = Np / 32;
  const AmxBlocking blk = amx_blocking();
  const int64_t G = std::max<int64_t>(1, blk.panels_per_group);
  const int64_t nc = std::max<int64_t>(1, blk.k_chunk / 32);
  pack_rows_bf16(dp, dout, M, N, Mp, Np);
  int64_t p0, p1;
  thread_range(panels, omp_get_thread_num(), omp_get_num_threads(), p0, p1);
  static thread_local Scratch acc_s, wv_s;
  float* acc = static_cast<float*>(acc_s.get(size_t(G * 2 * (Mp / 16)) * 1024));
  // B tiles of the group's 32-column panels over one n chunk: panel g, n step s, k-tile j at
  // ((g nc + s) 2 + j) KiB
  uint32_t* wv = static_cast<uint32_t*>(wv_s.get(size_t(G * nc * 2) * 1024));
  configure_tiles();
  for (int64_t g0 = p0; g0 < p1; g0 += G) {
    const int64_t gn = std::min(G, p1 - g0);
    for (int64_t s0 = 0; s0 < nsteps; s0 += nc) {
      const int64_t steps = std::min(nc, nsteps - s0);
      interleave_weight_group(wv, W, N, K, g0, gn, s0, steps, nc);
      // A-stationary: one 32-row block of bf16(dy) over this chunk stays in L1 while the group's interleaved
      // weight panels stream past it from L2
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        const std::byte* a0 = reinterpret_cast<const std::byte*>(dp + (mb * 32) * Np + s0 * 32);
        for (int64_t g = 0; g < gn; ++g) {
          float* c = acc + ((g * mblocks + mb) * 4) * 256;  // tiles (m-tile i, k-tile j) at (2i + j)
          load_c(c, s0 == 0);
          const std::byte* bw = reinterpret_cast<const std::byte*>(wv + g * nc * 512);
          // B tiles of step s are 2 KiB apart here (both k-tiles of a step side by side)
          for (int64_t s = 0; s < steps; ++s) {
            _tile_loadd(4, a0 + s * 64, Np * 2);
            _tile_loadd(6, bw + s * 2048, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, bw + s * 2048 + 1024, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(5, a0 + 16 * Np * 2 + s * 64, Np * 2);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          store_c(c);
        }
      }
    }
    for (int64_t mb = 0; mb < mblocks; ++mb)
      for (int i = 0; i < 2; ++i)
        for (int64_t g = 0; g < gn; ++g)
          for (int j = 0; j < 2; ++j) {
            const int64_t m = mb * 32 + i * 16, k = (g0 + g) * 32 + j * 16;
            if (m >= M || k >= K) continue;
            write_tile(dinp + m * K + k, K, acc + ((g * mblocks + mb) * 4 + 2 * i + j) * 256,
                       std::min<int64_t>(16, M - m), std::min<int64_t>(16, K - k), false, true);
          }
  }
  _tile_release();
}

ZL_AMX_TARGET void backward_pass(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N,
                                 int64_t K) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int64_t Mp = round_up(M, 32), Np = round_up(N, 32);
  static thread_local Scratch ds;
  uint16_t* dp = static_cast<uint16_t*>(ds.get(size_t(Mp * Np) * 2));
#pragma omp parallel
  backward_pass_thread(dinp, dout, W, M, N, K, dp);
}

// ---- batched GEMM for attention's products (amx_gemm_bf16) --------------------------------------------

// Columns [16 nt, 16 nt + 32) of one batch element's B -> bp in the tile unit's B layout: for each of the two
// 16-column tiles j and k pair p, 16 dwords (B[2p][n], B[2p+1][n]) at bp + (j Kp/2 + p) 16; zero past N and K.
ZL_AMX_TARGET void pack_b_pairs(uint32_t* bp, const AmxGemmShape& g, const uint16_t* b, int64_t nt0, int64_t Kp) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx = _mm512_load_si512(kInterleave);
  const int64_t kpairs = Kp / 2;
  for (int64_t j = 0; j < 2; ++j) {
    uint32_t* dst = bp + j * kpairs * 16;
    const int64_t n0 = (nt0 + j) * 16;
    if (g.trans_b) {  // B [N,K]: row n's pair p is the dword wanted at (p, n): 16x16 dword transposes
      for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
        const int64_t kn = std::clamp<int64_t>(g.K - k0, 0, 32);
        const __mmask32 km = kn >= 32 ? ~__mmask32(0) : __mmask32((1u << kn) - 1);
        __m512i r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = n0 + i < g.N ? _mm512_maskz_loadu_epi16(km, b + (n0 + i) * g.ldb + k0) : _mm512_setzero_si512();
        transpose16(r);  // r[p] = the 16 rows' dword p
        for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + (k0 / 2 + p) * 16, r[p]);
      }
    } else {  // B [K,N]: rows 2p and 2p + 1, 16 columns each, interleaved
      const int64_t cn = std::clamp<int64_t>(g.N - n0, 0, 16);
      const __mmask16 cm = cn >= 16 ? __mmask16(0xffff) : __mmask16((1u << cn) - 1);
      for (int64_t p = 0; p < kpairs; ++p) {
        const int64_t k = 2 * p;
        const __m256i r0 = k < g.K ? _mm256_maskz_loadu_epi16(cm, b + k * g.ldb + n0) : _mm256_setzero_si256();
        const __m256i r1 =
            k + 1 < g.K ? _mm256_maskz_loadu_epi16(cm, b + (k + 1) * g.ldb + n0) : _mm256_setzero_si256();
        _mm512_store_si512(dst + p * 16,
                           _mm512_permutex2var_epi16(_mm512_castsi256_si512(r0), idx, _mm512_castsi256_si512(r1)));
      }
    }
  }
}

// One batch element's A -> ap: Mp rows of Kp bf16, zero past M and K.
ZL_AMX_TARGET void pack_a_padded(uint16_t* ap, const AmxGemmShape& g, const uint16_t* a, int64_t Mp, int64_t Kp) {
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
      const int64_t kn = std::clamp<int64_t>(g.K - k0, 0, 32);
      const __mmask32 km = kn >= 32 ? ~__mmask32(0) : __mmask32((1u << kn) - 1);
      const __m512i v = m < g.M ? _mm512_maskz_loadu_epi16(km, a + m * g.lda + k0) : _mm512_setzero_si512();
      _mm512_store_si512(ap + m * Kp + k0, v);
    }
}

// One thread's part. Work items are (batch element, 32-column block of C), taken dynamically (a thread that the
// machine's other jobs hold up leaves its share to the others), each packing its own 32 columns of B (O(32 K))
// and running down all 32-row blocks; A is read in place, or packed once per batch element a thread meets. No
// barrier but the parallel region's end. C tiles that lie inside C are loaded and stored in place; the edge ones
// go through `edge`.
ZL_AMX_TARGET void gemm_bf16_thread(const AmxGemmShape& g, const uint16_t* A, const uint16_t* B, float* C) {
  const int64_t Mp = round_up(g.M, 32), Np = round_up(g.N, 32), Kp = round_up(g.K, 32);
  const int64_t mblocks = Mp / 32, nblocks = Np / 32, ksteps = Kp / 32;
  const bool pad_a = g.M % 32 != 0 || g.K % 32 != 0;  // else every A tile lies inside A
  static thread_local Scratch bs, as;
  uint32_t* bp = static_cast<uint32_t*>(bs.get(size_t(Kp) * 64));
  uint16_t* ap = pad_a ? static_cast<uint16_t*>(as.get(size_t(Mp * Kp) * 2)) : nullptr;
  int64_t a_batch = -1;  // the batch element in ap
  const int64_t lda = pad_a ? Kp : g.lda;
  const int64_t ldc_bytes = g.ldc * 4;
  alignas(64) float edge[4][256];
  bool configured = false;
#pragma omp for schedule(dynamic, 1) nowait
  for (int64_t item = 0; item < g.batch * nblocks; ++item) {
    const int64_t i = item / nblocks, nb = item % nblocks;
    if (!configured) {
      configure_tiles();
      configured = true;
    }
    pack_b_pairs(bp, g, B + i * g.sb, 2 * nb, Kp);
    if (pad_a && a_batch != i) {
      pack_a_padded(ap, g, A + i * g.sa, Mp, Kp);
      a_batch = i;
    }
    const uint16_t* abase = pad_a ? ap : A + i * g.sa;
    const std::byte* b0 = reinterpret_cast<const std::byte*>(bp);
    float* c = C + i * g.sc;
    const int64_t n0 = nb * 32;
    for (int64_t mb = 0; mb < mblocks; ++mb) {
      const std::byte* a0 = reinterpret_cast<const std::byte*>(abase + mb * 32 * lda);
      const int64_t m0 = mb * 32;
      // tile t = 2 (m tile) + (n tile), as kernel_2x2 accumulates them
      int64_t rows[4], cols[4];
      bool inside[4];
      for (int t = 0; t < 4; ++t) {
        rows[t] = std::clamp<int64_t>(g.M - (m0 + 16 * (t >> 1)), 0, 16);
        cols[t] = std::clamp<int64_t>(g.N - (n0 + 16 * (t & 1)), 0, 16);
        inside[t] = rows[t] == 16 && cols[t] == 16;
      }
      auto at = [&](int t) { return c + (m0 + 16 * (t >> 1)) * g.ldc + n0 + 16 * (t & 1); };
#define ZL_AMX_INIT(t)                                           \
  if (inside[t] && g.accumulate) _tile_loadd(t, at(t), ldc_bytes); \
  else _tile_zero(t);
      ZL_AMX_INIT(0)
      ZL_AMX_INIT(1)
      ZL_AMX_INIT(2)
      ZL_AMX_INIT(3)
#undef ZL_AMX_INIT
      kernel_2x2(a0, a0 + 16 * lda * 2, lda * 2, b0, b0 + (Kp / 2) * 64, ksteps);
#define ZL_AMX_STORE(t)                             \
  if (inside[t]) _tile_stored(t, at(t), ldc_bytes); \
  else _tile_stored(t, edge[t], 64);
      ZL_AMX_STORE(0)
      ZL_AMX_STORE(1)
      ZL_AMX_STORE(2)
      ZL_AMX_STORE(3)
#undef ZL_AMX_STORE
      for (int t = 0; t < 4; ++t)
        if (!inside[t] && rows[t] > 0 && cols[t] > 0)
          write_tile(at(t), g.ldc, edge[t], rows[t], cols[t], false, g.accumulate);
    }
  }
  if (configured) _tile_release();
}

// One thread's part of amx_gemm_bf16_pair: items (batch element, 32-column block) as gemm_bf16_thread's, each
// packing both products' 32 columns of B, then every 32-row block: the 2x2 tiles of product 1, stored into c1, the
// same for product 2 into c2, and the epilogue.
ZL_AMX_TARGET void gemm_pair_thread(const AmxBlockShape& p, const uint16_t* A1, const uint16_t* B1, const uint16_t* A2,
                                    const uint16_t* B2, AmxPairEpilogue epilogue, void* ctx) {
  const int64_t mblocks = p.M / 32, nblocks = p.N / 32, Kp = p.K;
  const AmxGemmShape packing{p.batch, p.M, p.N, p.K, p.lda, p.ldb, 0, p.sa, p.sb, 0, true, false};
  static thread_local Scratch bs;
  uint32_t* bp1 = static_cast<uint32_t*>(bs.get(size_t(Kp) * 128));  // each product: Kp / 2 pairs x 2 tiles x 64 B
  uint32_t* bp2 = bp1 + Kp * 16;
  alignas(64) float c1[1024], c2[1024];
  bool configured = false;
#pragma omp for schedule(dynamic, 1) nowait
  for (int64_t item = 0; item < p.batch * nblocks; ++item) {
    const int64_t i = item / nblocks, nb = item % nblocks;
    if (!configured) {
      configure_tiles();
      configured = true;
    }
    pack_b_pairs(bp1, packing, B1 + i * p.sb, 2 * nb, Kp);
    pack_b_pairs(bp2, packing, B2 + i * p.sb, 2 * nb, Kp);
    for (int64_t mb = 0; mb < mblocks; ++mb) {
      block_product(A1 + i * p.sa + mb * 32 * p.lda, p.lda, bp1, Kp);
      store_block(c1, 32);
      block_product(A2 + i * p.sa + mb * 32 * p.lda, p.lda, bp2, Kp);
      store_block(c2, 32);
      epilogue(ctx, i, mb * 32, nb * 32, c1, c2);
    }
  }
  if (configured) _tile_release();
}

ZL_AMX_TARGET void gemm_pair(const AmxBlockShape& p, const uint16_t* A1, const uint16_t* B1, const uint16_t* A2,
                             const uint16_t* B2, AmxPairEpilogue epilogue, void* ctx) {
#pragma omp parallel if (!omp_in_parallel())  // inside a parallel region (attention's head per thread): alone
  gemm_pair_thread(p, A1, B1, A2, B2, epilogue, ctx);
}

// One thread's part of amx_gemm_bf16_rows: items (batch element, 32-row block); B_i packed whole (all N columns,
// 32 at a time as gemm_bf16_thread packs them) when the thread meets a new batch element.
ZL_AMX_TARGET void gemm_rows_thread(const AmxBlockShape& p, const uint16_t* A, const uint16_t* B,
                                    AmxRowsEpilogue epilogue, void* ctx) {
  const int64_t mblocks = p.M / 32, nblocks = p.N / 32, Kp = p.K;
  const AmxGemmShape packing{p.batch, p.M, p.N, p.K, p.lda, p.ldb, 0, p.sa, p.sb, 0, true, false};
  static thread_local Scratch bs, cs;
  uint32_t* bp = static_cast<uint32_t*>(bs.get(size_t(nblocks * Kp) * 64));  // 32-column panel nb at nb Kp 16 dwords
  float* c = static_cast<float*>(cs.get(size_t(32 * p.N) * 4));
  int64_t b_batch = -1;  // the batch element in bp
  bool configured = false;
#pragma omp for schedule(dynamic, 1) nowait
  for (int64_t item = 0; item < p.batch * mblocks; ++item) {
    const int64_t i = item / mblocks, mb = item % mblocks;
    if (!configured) {
      configure_tiles();
      configured = true;
    }
    if (b_batch != i) {
      for (int64_t nb = 0; nb < nblocks; ++nb) pack_b_pairs(bp + nb * Kp * 16, packing, B + i * p.sb, 2 * nb, Kp);
      b_batch = i;
    }
    for (int64_t nb = 0; nb < nblocks; ++nb) {  // into columns 32 nb.. of the 32 x N block
      block_product(A + i * p.sa + mb * 32 * p.lda, p.lda, bp + nb * Kp * 16, Kp);
      store_block(c + nb * 32, p.N);
    }
    epilogue(ctx, i, mb * 32, c);
  }
  if (configured) _tile_release();
}

ZL_AMX_TARGET void gemm_rows(const AmxBlockShape& p, const uint16_t* A, const uint16_t* B, AmxRowsEpilogue epilogue,
                             void* ctx) {
#pragma omp parallel if (!omp_in_parallel())  // inside a parallel region (attention's head per thread): alone
  gemm_rows_thread(p, A, B, epilogue, ctx);
}

ZL_AMX_TARGET void gemm_bf16(const AmxGemmShape& g, const uint16_t* A, const uint16_t* B, float* C) {
#pragma omp parallel if (!omp_in_parallel())  // inside a parallel region (attention's head per thread): alone
  gemm_bf16_thread(g, A, B, C);
}

}  // namespace

namespace {
// The block kernels' shape: false when there is nothing to compute; core::Error unless M, N and K are positive
// multiples of 32.
bool block_shape_ok(const AmxBlockShape& g, const char* who) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return false;
  core::check(g.M % 32 == 0 && g.N % 32 == 0 && g.K % 32 == 0 && g.K > 0, who,
              "M, N and K must be positive multiples of 32 (got " + std::to_string(g.M) + ", " + std::to_string(g.N) +
                  ", " + std::to_string(g.K) + ")");
  return true;
}
}  // namespace

void amx_gemm_bf16_pair(const AmxBlockShape& g, const uint16_t* A1, const uint16_t* B1, const uint16_t* A2,
                        const uint16_t* B2, AmxPairEpilogue epilogue, void* ctx) {
  if (!block_shape_ok(g, "amx_gemm_bf16_pair")) return;
  gemm_pair(g, A1, B1, A2, B2, epilogue, ctx);
}

void amx_gemm_bf16_rows(const AmxBlockShape& g, const uint16_t* A, const uint16_t* B, AmxRowsEpilogue epilogue,
                        void* ctx) {
  if (!block_shape_ok(g, "amx_gemm_bf16_rows")) return;
  gemm_rows(g, A, B, epilogue, ctx);
}

void amx_gemm_bf16(const AmxGemmShape& g, const uint16_t* A, const uint16_t* B, float* C) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) {  // an empty sum: C = 0, or C unchanged
    if (!g.accumulate)
      for (int64_t i = 0; i < g.batch; ++i)
        for (int64_t m = 0; m < g.M; ++m) std::fill_n(C + i * g.sc + m * g.ldc, g.N, 0.0f);
    return;
  }
  gemm_bf16(g, A, B, C);
}

}  // namespace zerolora::kernels::cpu
