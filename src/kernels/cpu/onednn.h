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

// Native bf16 matmul available and not switched off by set_bf16_force_portable.
bool bf16_use_native();

// Tests: route BF16 linears (and bf16 blocked attention) through the portable path even where the
// native one exists.
void set_bf16_force_portable(bool on);

// Tests: make FrozenWeight::prepack keep oneDNN's chosen weight layout even when it is a plain one
// (no gain), so that the prepacked matmul path runs on CPUs where packing is otherwise skipped.
void set_prepack_even_if_plain(bool on);

// Scratch budgets of the portable path (f32 elements; 16 MB each by default). The weight is
// widened in tiles of as many whole rows (forward) / columns (backward) as fit: sgemm repacks the
// input block on every call, so wide tiles matter (256-row tiles ran at ~1/2 the speed of 2048).
// Adjustable so that tests reach every edge with small shapes.
struct PortableTiling {
  int64_t input_elems = int64_t(1) << 22;   // the bf16-rounded input block [rows, K or N]
  int64_t weight_elems = int64_t(1) << 22;  // the widened weight tile
};
PortableTiling& portable_tiling();

}  // namespace zerolora::kernels::cpu
