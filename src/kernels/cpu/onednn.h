// The oneDNN side of the CPU backend (internal to kernels/cpu and its tests): one engine and stream
// for the process, and how BF16 linears are routed.
#pragma once
#include <cstdint>

#include <oneapi/dnnl/dnnl.hpp>

namespace zerolora::kernels::cpu {

dnnl::engine& dnnl_engine();
dnnl::stream& dnnl_stream();

// True when oneDNN has a real (non-reference) bf16 x bf16 -> f32 matmul on this CPU: AVX512-BF16,
// AMX, or oneDNN's AVX-512 emulation. oneDNN 2.6 has none on AVX2-only CPUs (Zen 3), where BF16
// linears take the portable path instead: the input rounded to bf16 exactly as the native path
// does, weight tiles widened to f32, products summed in fp32 by sgemm (same values up to the order
// of the fp32 sums).
bool bf16_native_available();

// Tests: route BF16 linears through the portable path even where the native one exists.
void set_bf16_force_portable(bool on);

// Tile sizes of the portable path, adjustable so that tests reach every edge with small shapes.
struct PortableTiling {
  int64_t scratch_elems = int64_t(1) << 22;  // f32 elements of the rounded-input block (16 MB)
  int64_t weight_tile = 256;                 // weight rows (forward) / columns (backward) per sgemm
};
PortableTiling& portable_tiling();

}  // namespace zerolora::kernels::cpu
