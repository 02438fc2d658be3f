// The LoRA branch's GPU work at one training step's shapes (issue 17): every fp32 GEMM of lora_linear for each
// projection shape, timed with cuBLASLt's heuristic alone (split-K off) and with kernels/cuda/gemm.cu's split-K
// rule, plus a sweep of forced split counts for the weight gradients (the data to tune the rule), and the dropout
// paths (forward u, backward dA and dx) unfused (dropout_apply + GEMM, as on the CPU) vs fused. One line per
// product (us, GB/s of the operands' minimal traffic, GFLOP/s), then the heuristic's algorithm for it and for the
// rule's batched parts (cuBLASLt config ids; a tile id decodes with `grep ' = ID,' cublasLt.h`), for the weight
// gradients a sweep (forced S: parts, us); one dropout line per projection shape, then the LoRA branch's time summed
// over the step (each shape times its count x layers): without dropout (heuristic alone vs the split-K rule) and with
// dropout 0.05 (heuristic + unfused; split-K + unfused; split-K + fused), and a JSON line.
//   bench_cuda_lora_gemms [--rows M] [--r R] [--layers L] [--hidden H] [--kv K] [--inter I] [--reps N]
// Defaults: TinyLlama-1.1B, batch 8 x seq 2048 (M 16384), r 16, 22 layers (q, k, v, o, gate, up, down).
// Correctness is the tests' job (tests/kernels/test_cuda_gemm_split_k.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/context.h"
#include "kernels/cuda/common.cuh"
#include "kernels/dropout.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;

#include "kernels/cuda_backend.h"  // the backend entry points this exercises directly

namespace {

__global__ void fill_kernel(float* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t h = DropoutMask::fmix32(uint32_t(i) ^ seed) ^ uint32_t(i >> 32);
    x[i] = scale * (float(DropoutMask::fmix32(h) >> 8) * (1.0f / 16777216.0f) - 0.5f);
  }
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

struct Timer {
  CudaState& s;
  int reps;
  // mean microseconds of one call of f over reps calls (after 2 warm-up calls), CUDA events on the stream
  double operator()(const std::function<void()>& f) const {
    f();
    f();
    cudaEvent_t a, b;
    check(cudaEventCreate(&a), "cudaEventCreate");
    check(cudaEventCreate(&b), "cudaEventCreate");
    check(cudaEventRecord(a, s.stream), "cudaEventRecord");
    for (int i = 0; i < reps; ++i) f();
    check(cudaEventRecord(b, s.stream), "cudaEventRecord");
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 1000.0 * ms / reps;
  }
};

struct Proj {
  const char* names;
  int64_t in, out;
  int count;  // projections of this shape per layer
};

struct Gemm {
  const char* what;
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  const float *A, *B;
  int64_t lda, ldb;
  float* C;
  int64_t ldc;
  bool weight_grad;  // a K = M product (split-K's target): gets the sweep
};

int64_t arg(int argc, char** argv, const char* name, int64_t def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t M = arg(argc, argv, "--rows", 16384), r = arg(argc, argv, "--r", 16),
                layers = arg(argc, argv, "--layers", 22), hidden = arg(argc, argv, "--hidden", 2048),
                kv = arg(argc, argv, "--kv", 256), inter = arg(argc, argv, "--inter", 5632);
  const int reps = int(arg(argc, argv, "--reps", 20));
  if (cuda_device_count() == 0) {
    std::printf("bench_cuda_lora_gemms: no GPU visible: skipped\n");
    return 0;
  }
  CudaContext gpu(0);
  const Context& ctx = gpu.ctx();
  CudaState& s = *ctx.cuda;
  const Timer timeit{s, reps};
  const std::vector<Proj> projs = {
      {"q,o", hidden, hidden, 2}, {"k,v", hidden, kv, 2}, {"gate,up", hidden, inter, 2}, {"down", inter, hidden, 1}};
  int64_t max_in = 0, max_out = 0;
  for (const Proj& p : projs) max_in = std::max(max_in, p.in), max_out = std::max(max_out, p.out);
  std::vector<std::shared_ptr<void>> keep;
  auto buffer = [&](int64_t n, uint32_t seed) {
    keep.push_back(device_alloc(size_t(n) * sizeof(float), ctx));
    auto* p = static_cast<float*>(keep.back().get());
    fill_kernel<<<1024, 256, 0, s.stream>>>(p, n, seed, 0.1f);
    check(cudaGetLastError(), "fill");
    return p;
  };
  float* x = buffer(M * max_in, 1);  // the layer input
  float* h = buffer(M * max_in, 2);  // dropped input / scratch
  float* dx = buffer(M * max_in, 3);
  float* out = buffer(M * max_out, 4);
  float* dout = buffer(M * max_out, 5);
  float* u = buffer(M * r, 6);
  float* du = buffer(M * r, 7);
  float* A = buffer(r * max_in, 8);
  float* B = buffer(max_out * r, 9);
  float* dA = buffer(r * max_in, 10);
  float* dB = buffer(max_out * r, 11);
  synchronize(ctx);
  const float sc = 2.0f;
  const DropoutMask mask(42, 1, 0.05);
  std::printf("bench_cuda_lora_gemms: %s (%d SMs), M %lld, r %lld, %lld layers, fp32 (no TF32), %d reps\n",
              s.name.c_str(), s.sm_count, (long long)M, (long long)r, (long long)layers, reps);
  std::printf("  %-8s %-26s %-5s %6s %6s %6s | %-27s | %-32s | %s\n", "proj", "product", "op", "M", "N", "K",
              "heuristic us (GB/s, GFLOP/s)", "split-K rule: S, us (GB/s, GFLOP/s)", "gain");
  double nodrop_before = 0, nodrop_after = 0, drop_before = 0, drop_split = 0, drop_after = 0, flop_step = 0;
  for (const Proj& p : projs) {
    const double mult = double(p.count * layers);
    const std::vector<Gemm> gemms = {
        {"u = h A^T", false, true, M, r, p.in, 1.f, 0.f, h, A, p.in, p.in, u, r, false},
        {"out += s u B^T", false, true, M, p.out, r, sc, 1.f, u, B, r, r, out, p.out, false},
        {"du = s dout B", false, false, M, r, p.out, sc, 0.f, dout, B, p.out, r, du, r, false},
        {"dB += s dout^T u", true, false, p.out, r, M, sc, 1.f, dout, u, p.out, r, dB, r, true},
        {"dA += du^T h", true, false, r, p.in, M, 1.f, 1.f, du, h, r, p.in, dA, p.in, true},
        {"dx += du A", false, false, M, p.in, r, 1.f, 1.f, du, A, r, p.in, dx, p.in, false},
    };
    double t_h[6], t_s[6];
    for (size_t gi = 0; gi < gemms.size(); ++gi) {
      const Gemm& g = gemms[gi];
      auto run = [&] {
        gemm<float>(g.ta, g.tb, g.M, g.N, g.K, g.alpha, g.A, g.lda, g.B, g.ldb, g.beta, g.C, g.ldc, ctx);
      };
      const double bytes = 4.0 * double(g.M * g.K + g.K * g.N + g.M * g.N * (g.beta != 0.f ? 2 : 1));
      const double flop = 2.0 * double(g.M) * double(g.N) * double(g.K);
      cuda::set_gemm_split_k(0);
      const double t0 = timeit(run);
      cuda::set_gemm_split_k(-1);
      const int parts = cuda::gemm_split_k_parts(g.M, g.N, g.K, s);
      const double t1 = parts > 1 ? timeit(run) : t0;
      t_h[gi] = t0, t_s[gi] = t1;
      std::printf(
          "  %-8s %-26s %c%c    %6lld %6lld %6lld | %8.1f (%6.0f, %7.0f)    | S %2d %8.1f (%6.0f, %7.0f)"
          "    | x%.2f\n",
          p.names, g.what, g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', (long long)g.M, (long long)g.N, (long long)g.K, t0,
          bytes / t0 / 1e3, flop / t0 / 1e3, parts, t1, bytes / t1 / 1e3, flop / t1 / 1e3, t0 / t1);
      std::printf("  %-8s %-26s heuristic: %s", "", "",
                  cuda::gemm_algo_summary(g.ta, g.tb, g.M, g.N, g.K, 1, s).c_str());
      if (parts > 1 && g.K % parts == 0)  // the rule's parts as one strided batch
        std::printf("; split parts: %s", cuda::gemm_algo_summary(g.ta, g.tb, g.M, g.N, g.K / parts, parts, s).c_str());
      std::printf("\n");
      nodrop_before += mult * t0, nodrop_after += mult * t1, flop_step += mult * flop;
      if (g.weight_grad) {
        std::printf("  %-8s %-26s sweep (forced S: parts, us):", "", "");
        for (const int S : {2, 4, 8, 16, 32, 64}) {
          cuda::set_gemm_split_k(S);
          const int got = cuda::gemm_split_k_parts(g.M, g.N, g.K, s);
          std::printf("  %d %.1f", got, timeit(run));
        }
        std::printf("\n");
        cuda::set_gemm_split_k(-1);
      }
    }
    // with dropout (p 0.05): the forward's mask pass, and the backward's dA and dx as lora_linear runs them
    // unfused (dropout_apply + GEMM, the CPU's way) or fused
    const double t_mask = timeit([&] { dropout_apply<float>(h, x, M, p.in, mask, false, ctx); });
    auto unfused = [&] {
      dropout_apply<float>(h, x, M, p.in, mask, false, ctx);
      gemm<float>(true, false, r, p.in, M, 1.f, du, r, h, p.in, 1.f, dA, p.in, ctx);
      gemm<float>(false, false, M, p.in, r, 1.f, du, r, A, p.in, 0.f, h, p.in, ctx);
      dropout_apply<float>(dx, h, M, p.in, mask, true, ctx);
    };
    cuda::set_gemm_split_k(0);
    const double t_unfused_h = timeit(unfused);
    cuda::set_gemm_split_k(-1);
    const double t_unfused_s = timeit(unfused);
    bool fused_ok = true;
    const double t_fwd =
        timeit([&] { fused_ok = cuda::lora_dropout_forward(u, x, A, M, p.in, r, mask, s) && fused_ok; });
    const double t_da =
        timeit([&] { fused_ok = cuda::lora_dropout_weight_grad(dA, du, x, M, p.in, r, mask, s) && fused_ok; });
    const double t_dx =
        timeit([&] { fused_ok = cuda::lora_dropout_backward_input(dx, du, A, M, p.in, r, mask, s) && fused_ok; });
    const double xbytes = 4.0 * double(M * p.in);
    std::printf(
        "  %-8s dropout: forward mask %.1f us (%.0f GB/s) + u gemm %.1f us, fused %.1f us (%.0f GB/s of x);"
        " backward dA+dx unfused %.1f us (heuristic) / %.1f us (split-K), fused dA %.1f us (%.0f GB/s of x)"
        " + dx %.1f us (%.0f GB/s of dx r+w)%s\n",
        p.names, t_mask, 2 * xbytes / t_mask / 1e3, t_s[0], t_fwd, xbytes / t_fwd / 1e3, t_unfused_h, t_unfused_s, t_da,
        xbytes / t_da / 1e3, t_dx, 2 * xbytes / t_dx / 1e3,
        fused_ok ? "" : " [no fused kernel for this r: fused timed nothing]");
    // the step's LoRA work for this shape with dropout: u (mask + gemm, or fused), out, du, dB, then dA and dx
    const double common_h = t_h[1] + t_h[2] + t_h[3], common_s = t_s[1] + t_s[2] + t_s[3];
    drop_before += mult * (t_mask + t_h[0] + common_h + t_unfused_h);
    drop_split += mult * (t_mask + t_s[0] + common_s + t_unfused_s);
    drop_after += mult * (fused_ok ? t_fwd + common_s + t_da + t_dx : t_mask + t_s[0] + common_s + t_unfused_s);
  }
  cuda::set_gemm_split_k(-1);
  std::printf("step (%lld layers, 7 projections, %.0f GFLOP of LoRA GEMMs), LoRA branch time:\n", (long long)layers,
              flop_step / 1e9);
  std::printf("  no dropout:   heuristic alone %.2f ms, split-K rule %.2f ms (x%.2f)\n", nodrop_before / 1e3,
              nodrop_after / 1e3, nodrop_before / nodrop_after);
  std::printf(
      "  dropout 0.05: heuristic alone, unfused %.2f ms; split-K, unfused %.2f ms; split-K, fused %.2f ms "
      "(x%.2f)\n",
      drop_before / 1e3, drop_split / 1e3, drop_after / 1e3, drop_before / drop_after);
  std::printf(
      "{\"bench\":\"cuda_lora_gemms\",\"device\":\"%s\",\"rows\":%lld,\"r\":%lld,\"layers\":%lld,"
      "\"nodrop_ms_before\":%.3f,\"nodrop_ms_after\":%.3f,\"dropout_ms_before\":%.3f,"
      "\"dropout_ms_split_k\":%.3f,\"dropout_ms_after\":%.3f}\n",
      s.name.c_str(), (long long)M, (long long)r, (long long)layers, nodrop_before / 1e3, nodrop_after / 1e3,
      drop_before / 1e3, drop_split / 1e3, drop_after / 1e3);
  return 0;
}
