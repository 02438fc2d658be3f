// NF4 (QLoRA) linear layers against the bf16 ones on a TinyLlama MLP shape: M = 512 tokens, K = 2048,
// N = 5632 (gate/up projection). nf4_linear_forward dequantises row tiles of W on every call; the bf16
// weight is stored dequantised once. Also the cost of the tile dequantisation alone, and the backward.
// Reports "GFLOP/s" (2 M N K per iteration) and, for dequantisation, "Gelem/s".
// Run e.g. bench_nf4 --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

using namespace zerolora;
using core::DType;

namespace {

constexpr int64_t kM = 512, kK = 2048, kN = 5632;

std::vector<float> random_vector(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(rng);
  return v;
}

const std::vector<float>& weight() {
  static const std::vector<float> w = random_vector(size_t(kN * kK), 0.02f, 42);
  return w;
}

const kernels::Nf4Weight& nf4_weight() {
  static const kernels::Nf4Weight q = kernels::nf4_quantize(weight().data(), kN, kK);
  return q;
}

void set_rate(benchmark::State& state) {
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * double(kM) * double(kN) * double(kK),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Nf4Forward(benchmark::State& state, DType compute) {
  const kernels::Nf4Tiling saved = kernels::nf4_tiling();
  if (state.range(0) > 0) kernels::nf4_tiling().tile_elems = state.range(0) * kK;
  state.SetLabel(std::to_string(kernels::nf4_tiling().tile_elems / kK) + "-row tiles");
  kernels::Nf4Weight q = nf4_weight();
  q.compute_dtype = compute;
  const auto x = random_vector(size_t(kM * kK), 1.0f, 7);
  std::vector<float> y(size_t(kM * kN));
  for (auto _ : state) {
    kernels::nf4_linear_forward(y.data(), x.data(), q, kM);
    benchmark::DoNotOptimize(y.data());
  }
  set_rate(state);
  state.counters["bytes/param"] = q.bytes_per_param();
  kernels::nf4_tiling() = saved;
}

void BM_Nf4BackwardInput(benchmark::State& state) {
  const auto g = random_vector(size_t(kM * kN), 1.0f, 8);
  std::vector<float> dx(size_t(kM * kK), 0.0f);
  for (auto _ : state) {
    kernels::nf4_linear_backward_input(dx.data(), g.data(), nf4_weight(), kM);
    benchmark::DoNotOptimize(dx.data());
  }
  set_rate(state);
}

void BM_DenseForward(benchmark::State& state, DType dtype) {
  core::Tensor w = core::Tensor::empty(DType::F32, {kN, kK});
  std::copy(weight().begin(), weight().end(), w.data<float>());
  const auto fw = kernels::FrozenWeight::make(dtype == DType::F32 ? w : w.to(dtype));
  const auto x = random_vector(size_t(kM * kK), 1.0f, 7);
  std::vector<float> y(size_t(kM * kN));
  if (dtype == DType::BF16)
    state.SetLabel(kernels::cpu::bf16_native_available() ? "oneDNN bf16 matmul" : "portable bf16 (widen + sgemm)");
  for (auto _ : state) {
    kernels::linear_forward<float>(y.data(), x.data(), fw, kM);
    benchmark::DoNotOptimize(y.data());
  }
  set_rate(state);
  state.counters["bytes/param"] = double(core::dtype_size(dtype));
}

void BM_Nf4DequantizeRows(benchmark::State& state) {
  const int64_t rows = 512;
  std::vector<float> tile(size_t(rows * kK));
  int64_t row0 = 0;
  for (auto _ : state) {
    kernels::nf4_dequantize_rows(nf4_weight(), row0, rows, tile.data());
    benchmark::DoNotOptimize(tile.data());
    row0 = (row0 + rows) % (kN - rows);
  }
  state.counters["Gelem/s"] =
      benchmark::Counter(1e-9 * double(rows * kK), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// argument: rows per dequantised tile (0 = the default, 512 rows of K = 2048)
BENCHMARK_CAPTURE(BM_Nf4Forward, f32_compute, DType::F32)
    ->Arg(0)
    ->Arg(128)
    ->Arg(2048)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Nf4Forward, bf16_compute, DType::BF16)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_DenseForward, bf16, DType::BF16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_DenseForward, f32, DType::F32)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Nf4BackwardInput)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Nf4DequantizeRows)->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
