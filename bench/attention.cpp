// Attention forward + backward on the TinyLlama-1.1B head layout (32 query heads, 4 kv heads, head dim 64),
// causal, per kernel: flash fp32 tiles (attention.cpp) vs blocked GEMMs with fp32 or bf16 operands
// (attention_blocked.cpp; bf16 takes oneDNN's AMX / AVX512-BF16 matmul where the CPU has one).
// Reports "GFLOP/s" of the causal attention products (forward 2 GEMMs, backward 5, each 2 T^2/2 HD per head)
// and prints the oneDNN kernels the bf16 products used. The third argument: keys per product (blocked). Run e.g. bench_attention --benchmark_min_time=1
#include <benchmark/benchmark.h>

#include <cstdio>
#include <vector>

#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/onednn.h"
#include "kernels/kernels.h"

using namespace zerolora;
using namespace zerolora::kernels;

namespace {

enum Kernel { kFlash, kBlockedF32, kBlockedBf16 };

void BM_Attention(benchmark::State& state, Kernel kernel) {
  const AttentionShape s{state.range(0), state.range(1), 32, 4, 64};
  if (kernel == kBlockedBf16 && !cpu::bf16_native_available())
    state.SetLabel("no native bf16 matmul here: widened bf16 values through sgemm");
  const size_t nq = size_t(s.B * s.T * s.NH * s.HD), nkv = size_t(s.B * s.T * s.NKV * s.HD);
  std::vector<float> q(nq), k(nkv), v(nkv), dout(nq), out(nq), lse(size_t(s.B * s.NH * s.T)), dq(nq), dk(nkv),
      dv(nkv);
  uint64_t seed = 1;
  for (auto* buf : {&q, &k, &v, &dout})
    for (auto& e : *buf) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      e = float(int64_t(seed >> 40) % 2001 - 1000) / 1000.0f;
    }
  const AttentionOperands ops = kernel == kBlockedBf16 ? AttentionOperands::Bf16 : AttentionOperands::F32;
  const int64_t chunk_before = kernel == kFlash ? 0 : attention_blocked_key_chunk(state.range(2));
  const double product_seconds_before = attention_blocked_product_seconds();
  for (auto _ : state) {
    if (kernel == kFlash) {
      attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), s, nullptr, nullptr);
      attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                out.data(), lse.data(), s, nullptr, nullptr);
    } else {
      attention_forward_blocked(attention_best_isa(), ops, out.data(), lse.data(), q.data(), k.data(), v.data(), s, nullptr, nullptr);
      attention_backward_blocked(attention_best_isa(), ops, dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                 out.data(), lse.data(), s, nullptr, nullptr);
    }
    benchmark::DoNotOptimize(dq.data());
  }
  const double flops = 7.0 * 2.0 * double(s.T) * double(s.T) / 2.0 * double(s.HD) * double(s.NH) * double(s.B);
  state.counters["GFLOP/s"] = benchmark::Counter(1e-9 * flops, benchmark::Counter::kIsIterationInvariantRate);
  if (kernel != kFlash)  // seconds per iteration inside the GEMMs (the rest: softmax passes, packing; on AMX the
                         // scores' softmax runs inside S = Q K^T's fused kernel and counts here)
    state.counters["gemm_s"] = (attention_blocked_product_seconds() - product_seconds_before) / double(state.iterations());
  if (kernel != kFlash) attention_blocked_key_chunk(chunk_before);
}

// {batch, T, keys per product of the blocked kernels}
void args(benchmark::internal::Benchmark* b, std::initializer_list<int64_t> chunks) {
  for (int64_t c : chunks) b->Args({1, 512, c})->Args({4, 512, c})->Args({1, 2048, c});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_Attention, flash_f32, kFlash)->Apply([](auto* b) { args(b, {0}); });
BENCHMARK_CAPTURE(BM_Attention, blocked_f32, kBlockedF32)->Apply([](auto* b) { args(b, {512}); });
BENCHMARK_CAPTURE(BM_Attention, blocked_bf16, kBlockedBf16)->Apply([](auto* b) { args(b, {256, 512, 1024}); });

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  for (const auto& name : attention_blocked_native_kernels()) std::printf("bf16 attention, %s\n", name.c_str());
  return 0;
}
