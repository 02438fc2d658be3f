// The CPU's matrix units against the frozen bf16 GEMMs of a LoRA step, side by side in one process, interleaved
// (every round runs every variant once per shape, in turn; medians over rounds), for 1 and 2 threads:
//
//   peak AMX        tdpbf16ps on resident tiles (4 independent 16x16 fp32 accumulators; no loads): the tile
//                   unit's limit per core (what the AMX kernels are measured against)
//   peak vdpbf16ps  AVX512-BF16 dot products on 16 resident zmm accumulators: the vector units' bf16 limit
//   onednn          linear_forward / linear_backward_input through Debian's oneDNN 2.6 bf16 matmul, as the
//                   engine ran them before the AMX kernels (plain weight, f32 -> bf16 conversion included)
//   onednn-packed   the same forward over FrozenWeight::prepack's blocked copy (a second copy of the weight)
//   amx             zerolora's AMX kernels over the plain bf16 weight (kernels/cpu/amx_gemm.h), conversion
//                   and packing of the activations included
//   linear          linear_forward / linear_backward_input as dispatched now (what a training step runs)
//   mkl-packed      PyPI mkl's cblas_gemm_bf16bf16f32_compute over a weight packed by _pack (one packed copy
//                   per direction), when --mkl DIR (the folder holding libmkl_rt.so.3) is given; dlopen'ed
//   mkl-plain       cblas_gemm_bf16bf16f32 on the plain weight (no copy)
//
// Shapes: the TinyLlama-1.1B projections at M tokens (default 512): q/o 2048->2048, k/v 2048->256,
// gate/up 2048->5632, down 5632->2048; "fwd" is y = x W^T (out[M,N]), "dX" is dx += dy W (out[M,K]).
// A frozen weight gets no dW product. GFLOP/s = 2 M N K / seconds.
//
//   bench_cpu_matrix_units [--m 512] [--rounds 5] [--threads 1,2] [--mkl DIR] [--only fwd|dX]
//                          [--amx-blocking PANELS,K_CHUNK]   (cpu::AmxBlocking; default 8,512)
//                          [--variants amx,onednn,...]      (only these GEMM variants; default all)
#include <dlfcn.h>
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/onednn.h"
#include "kernels/cpu_info.h"
#include "kernels/kernels.h"

using namespace zerolora;
using core::DType;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// CPU seconds of the whole process (all threads): on a machine shared with other jobs, FLOPs per CPU second
// are what the code does while it has a core; wall-clock rates are what it did under the load there was.
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

struct Rate {
  double wall, per_cpu;  // GFLOP/s over wall time; GFLOP per CPU second
};

// ---- physical limits ---------------------------------------------------------------------------------

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// FLOPs of `iters` x 8 tdpbf16ps (2 per accumulator tile, 16 x 16 x 32 multiply-adds each)
__attribute__((target("amx-tile,amx-bf16"))) double amx_loop(int64_t iters) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  _tile_loadconfig(&c);
  alignas(64) static const uint16_t ones[512] = {};
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    _tile_dpbf16ps(0, 5, 7);
    _tile_dpbf16ps(1, 5, 6);
    _tile_dpbf16ps(2, 4, 7);
    _tile_dpbf16ps(3, 4, 6);
  }
  alignas(64) float sink[256];
  _tile_stored(0, sink, 64);
  _tile_release();
  asm volatile("" ::"r"(sink) : "memory");
  return double(iters) * 8 * 16 * 16 * 32 * 2;
}

// FLOPs of `iters` x 16 vdpbf16ps zmm (16 lanes x 2 multiply-adds each)
__attribute__((target("avx512f,avx512bf16"))) double vdpbf16ps_loop(int64_t iters) {
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f803f80);
#define ZL_ACC(i) __m512 a##i = _mm512_set1_ps(float(i));
#define ZL_DP(i) a##i = _mm512_dpbf16_ps(a##i, x, y); asm("" : "+v"(a##i));
#define ZL_16(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) F(12) F(13) F(14) F(15)
  ZL_16(ZL_ACC)
  for (int64_t i = 0; i < iters; ++i) {
    ZL_16(ZL_DP)
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                         _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
                           _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                                         _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
#undef ZL_ACC
#undef ZL_DP
#undef ZL_16
  asm volatile("" ::"v"(s));
  return double(iters) * 16 * 16 * 2 * 2;
}

// `loop` run by `threads` threads at once (each its own loop): FLOPs summed over threads
Rate peak(int threads, const std::function<double(int64_t)>& loop, int64_t iters) {
  double flops = 0;
  const double t0 = now(), c0 = cpu_now();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  flops += loop(iters);
  return {flops / (now() - t0) * 1e-9, flops / (cpu_now() - c0) * 1e-9};
}

// ---- MKL (dlopen) ------------------------------------------------------------------------------------

struct Mkl {
  void* h = nullptr;
  size_t (*pack_get_size)(int, int, int, int) = nullptr;
  void (*pack)(int, int, int, int, int, int, const uint16_t*, int, uint16_t*) = nullptr;
  void (*compute)(int, int, int, int, int, int, float, const uint16_t*, int, const uint16_t*, int, float, float*,
                  int) = nullptr;
  void (*gemm)(int, int, int, int, int, int, float, const uint16_t*, int, const uint16_t*, int, float, float*,
               int) = nullptr;  // cblas_gemm_bf16bf16f32 on the plain weight
  void (*set_threads)(int) = nullptr;
  bool load(const std::string& dir) {
    setenv("MKL_THREADING_LAYER", "GNU", 1);  // GCC's libgomp, the OpenMP the engine runs on
    h = dlopen((dir + "/libmkl_rt.so.3").c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
      std::fprintf(stderr, "error: cannot load %s/libmkl_rt.so.3: %s (fix: --mkl the folder of PyPI mkl's lib/, "
                           "with LD_LIBRARY_PATH set to it)\n", dir.c_str(), dlerror());
      return false;
    }
    pack_get_size = reinterpret_cast<decltype(pack_get_size)>(dlsym(h, "cblas_gemm_bf16bf16f32_pack_get_size"));
    pack = reinterpret_cast<decltype(pack)>(dlsym(h, "cblas_gemm_bf16bf16f32_pack"));
    compute = reinterpret_cast<decltype(compute)>(dlsym(h, "cblas_gemm_bf16bf16f32_compute"));
    gemm = reinterpret_cast<decltype(gemm)>(dlsym(h, "cblas_gemm_bf16bf16f32"));
    set_threads = reinterpret_cast<decltype(set_threads)>(dlsym(h, "MKL_Set_Num_Threads"));
    return pack_get_size && pack && compute && gemm && set_threads;
  }
};
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// ---- GEMM variants -----------------------------------------------------------------------------------

struct Shape {
  const char* name;
  int64_t N, K;  // W [N, K]
};

struct Problem {
  Shape s{};
  int64_t M = 0;
  kernels::FrozenWeight w, wp;  // plain; prepacked (oneDNN blocked copy) when prepack() did anything
  bool has_packed = false;
  std::vector<float> x, dy, y, dx;
  std::vector<uint16_t> xb, dyb;                    // MKL: bf16 activations (converted per call)
  std::shared_ptr<std::byte> mkl_fwd, mkl_bwd;  // MKL-packed W^T (forward) and W (dX)
};

Problem make(const Shape& s, int64_t M) {
  Problem p;
  p.s = s;
  p.M = M;
  auto src = bench::fast_random_source();
  core::Tensor W = src(std::string("w.") + s.name, DType::BF16, {s.N, s.K});
  p.w = kernels::FrozenWeight::make(W);
  p.wp = kernels::FrozenWeight::make(W.to(DType::F32).to(DType::BF16));
  kernels::cpu::set_amx_gemm_enabled(false);  // prepack() packs only for the oneDNN path
  p.has_packed = p.wp.prepack(M);
  kernels::cpu::set_amx_gemm_enabled(true);
  auto fill = [&](std::vector<float>& v, size_t n, const char* name) {
    core::Tensor t = src(name, DType::F32, {int64_t(n)});
    v.assign(t.data<float>(), t.data<float>() + n);
    for (auto& e : v) e *= 50;
  };
  fill(p.x, size_t(M * s.K), "x");
  fill(p.dy, size_t(M * s.N), "dy");
  p.y.assign(size_t(M * s.N), 0);
  p.dx.assign(size_t(M * s.K), 0);
  p.xb.resize(p.x.size());
  p.dyb.resize(p.dy.size());
  return p;
}

struct Variant {
  std::string name;
  bool fwd;
  std::function<void(Problem&)> run;  // empty: not available here
};

}  // namespace

int main(int argc, char** argv) {
  int64_t M = 512;
  int rounds = 5;
  std::vector<int> thread_counts{1, 2};
  std::string mkl_dir, only, only_variants;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: %s needs a value (fix: see the usage at the top of bench/cpu_matrix_units.cpp)\n",
                     a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--m") M = std::stoll(next());
    else if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--threads") {
      thread_counts.clear();
      std::string v = next();
      for (size_t p = 0; p < v.size();) {
        size_t q = v.find(',', p);
        thread_counts.push_back(std::stoi(v.substr(p, q - p)));
        p = q == std::string::npos ? v.size() : q + 1;
      }
    } else if (a == "--mkl") mkl_dir = next();
    else if (a == "--only") only = next();
    else if (a == "--variants") only_variants = "," + next() + ",";
    else if (a == "--amx-blocking") {
      const std::string v = next();
      const size_t c = v.find(',');
      if (c == std::string::npos) {
        std::fprintf(stderr, "error: --amx-blocking %s (fix: PANELS,K_CHUNK, e.g. 4,512)\n", v.c_str());
        return 2;
      }
      kernels::cpu::amx_blocking() = {std::stoll(v.substr(0, c)), std::stoll(v.substr(c + 1))};
    }
    else {
      std::fprintf(stderr, "error: unknown argument %s (fix: bench_cpu_matrix_units [--m 512] [--rounds 5] "
                           "[--threads 1,2] [--mkl DIR] [--only fwd|dX] [--amx-blocking P,KC] [--variants LIST])\n", a.c_str());
      return 2;
    }
  }
  const auto info = kernels::cpu_backend_info();
  std::printf("CPU extensions: %s\noneDNN %s, ISA %s, bf16 matmul %s\nAMX kernels: %s\n", info.cpu_extensions.c_str(),
              info.onednn_version.c_str(), info.onednn_isa.c_str(), info.bf16_matmul.c_str(),
              kernels::cpu::amx_supported() ? "supported" : "not supported on this CPU / kernel");
  double load[3] = {0, 0, 0};
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(f);
  }
  std::printf("load average at start: %.2f %.2f %.2f; M = %lld, %d rounds; AMX blocking %lld panels, k chunk %lld\n",
              load[0], load[1], load[2], (long long)M, rounds, (long long)kernels::cpu::amx_blocking().panels_per_group,
              (long long)kernels::cpu::amx_blocking().k_chunk);

  Mkl mkl;
  const bool have_mkl = !mkl_dir.empty() && mkl.load(mkl_dir);
  if (!mkl_dir.empty() && !have_mkl) return 1;

  // ---- peaks, interleaved: amx, vdpbf16ps, amx, ...
  std::map<std::string, std::vector<Rate>> peaks;
  for (int r = 0; r < rounds; ++r)
    for (int t : thread_counts) {
      if (kernels::cpu::amx_supported()) peaks["peak AMX tdpbf16ps, " + std::to_string(t) + " thr"].push_back(
          peak(t, amx_loop, 200000));
      if (__builtin_cpu_supports("avx512bf16")) peaks["peak vdpbf16ps zmm, " + std::to_string(t) + " thr"].push_back(
          peak(t, vdpbf16ps_loop, 2000000));
    }
  auto summary = [](const std::vector<Rate>& v, char* buf, size_t n) {
    std::vector<double> w, c;
    for (auto& r : v) {
      w.push_back(r.wall);
      c.push_back(r.per_cpu);
    }
    std::snprintf(buf, n, "%.1f | %.1f | %.1f | %.1f", bench::median(w), *std::min_element(w.begin(), w.end()),
                  *std::max_element(w.begin(), w.end()), bench::median(c));
  };
  char line[256];
  std::printf("\n| limit | GFLOP/s wall median | min | max | GFLOP per CPU-second median |\n|---|---|---|---|---|\n");
  for (auto& [k, v] : peaks) {
    summary(v, line, sizeof line);
    std::printf("| %s | %s |\n", k.c_str(), line);
  }

  // ---- GEMMs
  const Shape shapes[] = {{"q_proj/o_proj", 2048, 2048}, {"k_proj/v_proj", 256, 2048},
                          {"gate/up_proj", 5632, 2048}, {"down_proj", 2048, 5632}};
  std::vector<Problem> probs;
  for (const auto& s : shapes) probs.push_back(make(s, M));
  if (have_mkl) {
    for (auto& p : probs) {
      // forward: C[M,N] = A[M,K] . W^T, B = W^T (trans of the [N,K] array); dX: C[M,K] += A[M,N] . W
      size_t bf = mkl.pack_get_size(kBMatrix, int(M), int(p.s.N), int(p.s.K));
      p.mkl_fwd = core::alloc_aligned(bf);
      mkl.pack(kRowMajor, kBMatrix, kTrans, int(M), int(p.s.N), int(p.s.K), p.w.weight.bits16(), int(p.s.K),
               reinterpret_cast<uint16_t*>(p.mkl_fwd.get()));
      size_t bb = mkl.pack_get_size(kBMatrix, int(M), int(p.s.K), int(p.s.N));
      p.mkl_bwd = core::alloc_aligned(bb);
      mkl.pack(kRowMajor, kBMatrix, kNoTrans, int(M), int(p.s.K), int(p.s.N), p.w.weight.bits16(), int(p.s.K),
               reinterpret_cast<uint16_t*>(p.mkl_bwd.get()));
    }
  }
  const bool amx = kernels::cpu::amx_supported();
  std::vector<Variant> variants = {
      {"onednn", true, [](Problem& p) {
         kernels::cpu::set_amx_gemm_enabled(false);
         kernels::linear_forward<float>(p.y.data(), p.x.data(), p.w, p.M);
         kernels::cpu::set_amx_gemm_enabled(true);
       }},
      {"onednn-packed", true, [](Problem& p) {
         if (!p.has_packed) return;
         kernels::cpu::set_amx_gemm_enabled(false);
         kernels::linear_forward<float>(p.y.data(), p.x.data(), p.wp, p.M);
         kernels::cpu::set_amx_gemm_enabled(true);
       }},
      {"amx", true, amx ? std::function<void(Problem&)>([](Problem& p) {
         kernels::cpu::amx_linear_forward(p.y.data(), p.x.data(), p.w.weight.bits16(), p.M, p.s.N, p.s.K, false);
       }) : nullptr},
      {"linear", true, [](Problem& p) { kernels::linear_forward<float>(p.y.data(), p.x.data(), p.w, p.M); }},
      {"mkl-packed", true, have_mkl ? std::function<void(Problem&)>([&mkl](Problem& p) {
         core::convert(p.x.data(), DType::F32, p.xb.data(), DType::BF16, p.x.size());
         mkl.compute(kRowMajor, kNoTrans, kPacked, int(p.M), int(p.s.N), int(p.s.K), 1.0f, p.xb.data(),
                     int(p.s.K), reinterpret_cast<const uint16_t*>(p.mkl_fwd.get()), int(p.s.K), 0.0f, p.y.data(),
                     int(p.s.N));
       }) : nullptr},
      {"mkl-plain", true, have_mkl ? std::function<void(Problem&)>([&mkl](Problem& p) {
         core::convert(p.x.data(), DType::F32, p.xb.data(), DType::BF16, p.x.size());
         mkl.gemm(kRowMajor, kNoTrans, kTrans, int(p.M), int(p.s.N), int(p.s.K), 1.0f, p.xb.data(), int(p.s.K),
                  p.w.weight.bits16(), int(p.s.K), 0.0f, p.y.data(), int(p.s.N));
       }) : nullptr},
      {"onednn", false, [](Problem& p) {
         kernels::cpu::set_amx_gemm_enabled(false);
         kernels::linear_backward_input<float>(p.dx.data(), p.dy.data(), p.w, p.M);
         kernels::cpu::set_amx_gemm_enabled(true);
       }},
      {"amx", false, amx ? std::function<void(Problem&)>([](Problem& p) {
         kernels::cpu::amx_linear_backward_input(p.dx.data(), p.dy.data(), p.w.weight.bits16(), p.M, p.s.N, p.s.K);
       }) : nullptr},
      {"linear", false,
       [](Problem& p) { kernels::linear_backward_input<float>(p.dx.data(), p.dy.data(), p.w, p.M); }},
      {"mkl-packed", false, have_mkl ? std::function<void(Problem&)>([&mkl](Problem& p) {
         core::convert(p.dy.data(), DType::F32, p.dyb.data(), DType::BF16, p.dy.size());
         mkl.compute(kRowMajor, kNoTrans, kPacked, int(p.M), int(p.s.K), int(p.s.N), 1.0f, p.dyb.data(),
                     int(p.s.N), reinterpret_cast<const uint16_t*>(p.mkl_bwd.get()), int(p.s.N), 1.0f,
                     p.dx.data(), int(p.s.K));
       }) : nullptr},
      {"mkl-plain", false, have_mkl ? std::function<void(Problem&)>([&mkl](Problem& p) {
         core::convert(p.dy.data(), DType::F32, p.dyb.data(), DType::BF16, p.dy.size());
         mkl.gemm(kRowMajor, kNoTrans, kNoTrans, int(p.M), int(p.s.K), int(p.s.N), 1.0f, p.dyb.data(), int(p.s.N),
                  p.w.weight.bits16(), int(p.s.K), 1.0f, p.dx.data(), int(p.s.K));
       }) : nullptr},
  };
  if (!only_variants.empty())
    for (auto& v : variants)
      if (only_variants.find("," + v.name + ",") == std::string::npos) v.run = nullptr;
  // key: threads, dir, shape, variant -> seconds per call
  std::map<std::tuple<int, bool, std::string, std::string>, std::vector<std::pair<double, double>>> secs;
  for (int t : thread_counts) {
    omp_set_num_threads(t);
    if (have_mkl) mkl.set_threads(t);
    for (auto& v : variants)  // warm-up: primitive creation, scratch, first touch
      for (auto& p : probs)
        if (v.run && (only.empty() || (only == "fwd") == v.fwd)) v.run(p);
    for (int r = 0; r < rounds; ++r)
      for (auto& p : probs)
        for (auto& v : variants) {
          if (!v.run || (!only.empty() && (only == "fwd") != v.fwd)) continue;
          if (v.name == "onednn-packed" && !p.has_packed) continue;
          const int reps = 3;
          const double t0 = now(), c0 = cpu_now();
          for (int i = 0; i < reps; ++i) v.run(p);
          secs[{t, v.fwd, p.s.name, v.name}].push_back({(now() - t0) / reps, (cpu_now() - c0) / reps});
        }
  }
  std::printf("\n| threads | product | shape (N x K) | variant | GFLOP/s wall median | min | max | GFLOP per CPU-second "
              "median |\n|---|---|---|---|---|---|---|---|\n");
  for (auto& [key, v] : secs) {
    const auto& [t, fwd, shape, var] = key;
    const Problem* p = nullptr;
    for (auto& q : probs)
      if (shape == q.s.name) p = &q;
    const double flop = 2.0 * double(M) * double(p->s.N) * double(p->s.K) * 1e-9;
    std::vector<Rate> g;
    for (auto [w, c] : v) g.push_back({flop / w, flop / c});
    summary(g, line, sizeof line);
    std::printf("| %d | %s | %s %lldx%lld | %s | %s |\n", t, fwd ? "fwd" : "dX", shape.c_str(), (long long)p->s.N,
                (long long)p->s.K, var.c_str(), line);
  }
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(f);
  }
  std::printf("load average at end: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
  return 0;
}
