// Record of an experiment (issue 19, 2026-12-07 (e)): how fast can the 2x2 AMX inner loop of our forward linear
// (src/kernels/cpu/amx_gemm.cpp) run on this CPU when everything around it (f32 -> bf16 conversion, packing, the
// transposed write of the result) is left out, and what costs it the most. Not part of the build.
//
//   g++ -O2 -mamx-tile -mamx-bf16 -mavx512f -mavx512bw -o /tmp/amx-loop bench/results/2026-12-07e-amx-loop-isolation.cpp
//   /tmp/amx-loop [N K [M]]        # default 2048 2048 512 (q_proj at M 512); 1 thread, best of 5, GFLOP/s
//
// The data are random bf16 values: with zero-filled buffers the same loops ran 15-30 % faster on this VM (its host
// seems to merge zero pages, so every "L2" access hits one physical page), which made earlier zero-data experiments
// misleading. Layouts as in the engine: W [N, K] bf16 read in place (rows K * 2 bytes apart) as A tiles, x packed in
// B tiles (per 16-row m tile, k pairs interleaved: tile mt's 32-k step at ((mt * K/2) + 16 k0) dwords), fp32
// accumulators per (panel, m block) in an L2 buffer, loaded and stored once per k chunk. Loop order: per group of
// G 32-row weight panels and k chunk of kc steps, every 32-row block of x, every panel of the group.
//
// Variants (each one thing changed, so the differences say what the real loop pays for):
//   real             the loop as the engine runs it
//   adjacent-B       the two B tiles of a step side by side (one contiguous run per x block)
//   fixed-x          every m block reads the same x block (x never leaves L1)
//   fixed-W          every group reads the same weight panels (no new weight lines)
//   C-in-L1          the accumulators go to one 4 KiB buffer (no C traffic to L2)
//   all-fixed        fixed-x + fixed-W + C-in-L1: the loop's ceiling with tile loads on this CPU
//   prefetch-x       software prefetch (T0) of the next x block, spread over the group's panels
//   prefetch-W       software prefetch (T1) of the next weight chunk, spread over the loop
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Opt {
  bool adjacent_b = false, fixed_x = false, fixed_w = false, c_in_l1 = false, prefetch_x = false, prefetch_w = false;
};

__attribute__((noinline)) void loop(const Opt& o, const char* W, long N, long K, const char* xp, long M, float* acc,
                                    long G, long kc) {
  const long mblocks = M / 32, panels = N / 32, ksteps = K / 32, lda = K * 2;
  alignas(64) static float c_l1[1024];
  for (long g0 = 0; g0 < panels; g0 += G)
    for (long k0 = 0; k0 < ksteps; k0 += kc)
      for (long mb = 0; mb < mblocks; ++mb) {
        auto x_block = [&](long b) { return o.fixed_x ? xp : xp + (o.adjacent_b ? (b * ksteps * 2 + k0 * 2) * 1024 : ((2 * b) * (K / 2) + k0 * 16) * 64); };
        const char* b0 = x_block(mb);
        const long b1_off = o.adjacent_b ? 1024 : (K / 2) * 64, b_step = o.adjacent_b ? 2048 : 1024;
        const char* next_x = mb + 1 < mblocks ? x_block(mb + 1) : nullptr;
        const long nk0 = k0 + kc < ksteps ? k0 + kc : 0, ng0 = k0 + kc < ksteps ? g0 : g0 + G;
        for (long g = 0; g < G; ++g) {
          if (o.prefetch_x && next_x)  // this panel's share of the next x block (kc steps x 2 KiB over G panels)
            for (long i = 0; i < kc * 32 / G; ++i) {
              const long line = g * (kc * 32 / G) + i, tile = line / (kc * 16), rest = line % (kc * 16);
              _mm_prefetch(next_x + tile * b1_off + rest * 64, _MM_HINT_T0);
            }
          if (o.prefetch_w && ng0 < panels)  // this (m block, panel)'s share of the next chunk's weight rows
            for (long r = (mb * G + g) * 32 * G / (mblocks * G); r < (mb * G + g + 1) * 32 * G / (mblocks * G); ++r)
              for (long l = 0; l < kc; ++l) _mm_prefetch(W + (ng0 * 32 + r) * lda + nk0 * 64 + l * 64, _MM_HINT_T1);
          const char* a0 = o.fixed_w ? W + g * 32 * lda : W + (g0 + g) * 32 * lda + k0 * 64;
          const char* a1 = a0 + 16 * lda;
          float* c = o.c_in_l1 ? c_l1 : acc + ((g * mblocks + mb) * 4) * 256;
          if (k0) {
            _tile_loadd(0, c, 64); _tile_loadd(1, c + 256, 64); _tile_loadd(2, c + 512, 64); _tile_loadd(3, c + 768, 64);
          } else {
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
          }
          for (long s = 0; s < kc; ++s) {
            _tile_loadd(4, a0 + s * 64, lda);
            _tile_loadd(6, b0 + s * b_step, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(7, b0 + b1_off + s * b_step, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_loadd(5, a1 + s * 64, lda);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, c, 64); _tile_stored(1, c + 256, 64); _tile_stored(2, c + 512, 64); _tile_stored(3, c + 768, 64);
        }
      }
}

// The tile unit alone: 8 tdpbf16ps per iteration on resident tiles (bench_cpu_matrix_units' "peak AMX").
__attribute__((noinline)) double peak(long iters) {
  alignas(64) static uint16_t t[512];
  for (int i = 0; i < 512; ++i) t[i] = uint16_t(0x3c00 + (rand() & 0x3ff) - 512);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, t, 64); _tile_loadd(5, t, 64); _tile_loadd(6, t, 64); _tile_loadd(7, t, 64);
  const double t0 = now();
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    _tile_dpbf16ps(0, 5, 7); _tile_dpbf16ps(1, 5, 6); _tile_dpbf16ps(2, 4, 7); _tile_dpbf16ps(3, 4, 6);
  }
  return double(iters) * 8 * 16384 / (now() - t0) / 1e9;
}

int main(int argc, char** argv) {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return std::fprintf(stderr, "no AMX tile state\n"), 1;
  TileConfig tc;
  for (int t = 0; t < 8; ++t) tc.colsb[t] = 64, tc.rows[t] = 16;
  _tile_loadconfig(&tc);
  long N = 2048, K = 2048, M = 512;
  if (argc > 2) N = atol(argv[1]), K = atol(argv[2]);
  if (argc > 3) M = atol(argv[3]);
  const long G = 8, kc = 16;  // the engine's default blocking (cpu::AmxBlocking)
  auto* W = static_cast<uint16_t*>(aligned_alloc(4096, size_t(N * K * 2)));
  auto* xp = static_cast<uint16_t*>(aligned_alloc(4096, size_t(M * K * 2)));
  auto* acc = static_cast<float*>(aligned_alloc(4096, size_t(G * 2 * (M / 16) * 4096)));
  for (long i = 0; i < N * K; ++i) W[i] = uint16_t(0x3c00 + (rand() & 0x3ff) - 512);
  for (long i = 0; i < M * K; ++i) xp[i] = uint16_t(0x3c00 + (rand() & 0x3ff) - 512);
  const double pk = std::max(peak(1000000), peak(1000000));
  std::printf("N %ld K %ld M %ld, G %ld, kc %ld; peak AMX (resident tiles) %.0f GFLOP/s\n", N, K, M, G, kc, pk);
  struct V { const char* name; Opt o; };
  const V vs[] = {{"real", {}},
                  {"adjacent-B", {true}},
                  {"fixed-x", {false, true}},
                  {"fixed-W", {false, false, true}},
                  {"C-in-L1", {false, false, false, true}},
                  {"all-fixed", {false, true, true, true}},
                  {"prefetch-x", {false, false, false, false, true}},
                  {"prefetch-W", {false, false, false, false, false, true}}};
  for (const V& v : vs) {
    const char* w = reinterpret_cast<const char*>(W);
    const char* x = reinterpret_cast<const char*>(xp);
    loop(v.o, w, N, K, x, M, acc, G, kc);
    double best = 1e9;
    for (int r = 0; r < 5; ++r) {
      const double t0 = now();
      loop(v.o, w, N, K, x, M, acc, G, kc);
      best = std::min(best, now() - t0);
    }
    const double rate = 2.0 * M * N * K / best / 1e9;
    std::printf("%-12s %6.0f GFLOP/s  %4.1f %% of the peak\n", v.name, rate, 100 * rate / pk);
  }
}
