// GEMM throughput of linear_forward (and linear_backward_input) on the TinyLlama-1.1B shapes:
// M = 2048 tokens through K -> N projections, F32 vs BF16 weights, plain vs prepacked layout.
// Reports "GFLOP/s" (2 M N K per iteration). Run e.g. bench_gemm --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using core::DType;

namespace {

enum Variant { kF32, kF32Packed, kBf16, kBf16Packed };

struct Problem {
  kernels::FrozenWeight w;
  std::vector<float> x, y;
  bool packed = false;
};

Problem make_problem(int64_t M, int64_t K, int64_t N, Variant v) {
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  core::Tensor w = core::Tensor::empty(DType::F32, {N, K});
  for (int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = dist(rng);
  if (v == kBf16 || v == kBf16Packed) w = w.to(DType::BF16);
  Problem p{kernels::FrozenWeight::make(w), std::vector<float>(size_t(M * std::max(K, N))),
            std::vector<float>(size_t(M * std::max(K, N)))};
  for (auto& e : p.x) e = dist(rng) * 50;
  if (v == kF32Packed || v == kBf16Packed) p.packed = p.w.prepack(M);
  return p;
}

void set_rate(benchmark::State& state, int64_t M, int64_t K, int64_t N) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * double(M) * double(N) * double(K), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LinearForward(benchmark::State& state, Variant v) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  Problem p = make_problem(M, K, N, v);
  if ((v == kF32Packed || v == kBf16Packed) && !p.packed) {
    state.SkipWithError("prepack() is a no-op on this CPU (its best kernel takes the plain layout)");
    return;
  }
  if ((v == kBf16 || v == kBf16Packed))
    state.SetLabel(kernels::cpu::bf16_native_available() ? "oneDNN bf16 matmul" : "portable bf16 (widen + sgemm)");
  for (auto _ : state) {
    kernels::linear_forward<float>(p.y.data(), p.x.data(), p.w, M);
    benchmark::DoNotOptimize(p.y.data());
  }
  set_rate(state, M, K, N);
}

void BM_LinearBackwardInput(benchmark::State& state, Variant v) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  Problem p = make_problem(M, K, N, v);
  if (v == kBf16)
    state.SetLabel(kernels::cpu::bf16_native_available() ? "oneDNN bf16 matmul" : "portable bf16 (widen + sgemm)");
  for (auto _ : state) {
    kernels::linear_backward_input<float>(p.y.data(), p.x.data(), p.w, M);  // dinp[M,K] += dout[M,N] W
    benchmark::DoNotOptimize(p.y.data());
  }
  set_rate(state, M, K, N);
}

// {M, K, N}: q/o projection (2048 -> 2048), gate/up (2048 -> 5632), down (5632 -> 2048)
void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "K", "N"});
  b->Args({2048, 2048, 2048});
  b->Args({2048, 2048, 5632});
  b->Args({2048, 5632, 2048});
  b->Unit(benchmark::kMillisecond);
  b->UseRealTime();
}

}  // namespace

BENCHMARK_CAPTURE(BM_LinearForward, f32, kF32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_LinearForward, f32_prepacked, kF32Packed)->Apply(shapes);
BENCHMARK_CAPTURE(BM_LinearForward, bf16, kBf16)->Apply(shapes);
BENCHMARK_CAPTURE(BM_LinearForward, bf16_prepacked, kBf16Packed)->Apply(shapes);
BENCHMARK_CAPTURE(BM_LinearBackwardInput, f32, kF32)->Apply(shapes);
BENCHMARK_CAPTURE(BM_LinearBackwardInput, bf16, kBf16)->Apply(shapes);

BENCHMARK_MAIN();
