// NF4 dequantisation on the device, bit for bit the CPU's (kernels/cpu/nf4.cpp, layout in kernels/nf4.h):
//   absmax_b = dynamic_map[absmax_q[b]] * absmax2[b / 256] + offset   (double quant; product rounded first)
//   absmax_b = absmax[b]                                               (without)
//   w[e]     = code[q(e)] * absmax_b,  q(2k) the high nibble of packed[k], q(2k+1) the low one
// One thread per packed byte (its two elements lie in the same 64-block, blocks start at even elements).
// __fmul_rn / __fadd_rn keep nvcc from fusing the absmax product and sum into one FMA, which would round
// once where the CPU (and bitsandbytes) round twice. bf16 output: round to nearest even of the fp32 value,
// NaN kept a quiet NaN, as core::f32_to_bf16.
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_backend.h"

namespace zerolora::kernels::cuda {

namespace {

constexpr int kThreads = 256;

struct Nf4Args {
  const uint8_t* packed;
  const float* absmax;      // !double_quant
  const uint8_t* absmax_q;  // double_quant
  const float* absmax2;     // double_quant
  const float* code;        // [16]
  const float* dynamic_map;  // [256], double_quant
  float offset;
  int64_t numel;
};

__device__ inline uint16_t to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

template <bool DoubleQuant, bool Bf16>
__global__ void nf4_dequantize_kernel(void* out, Nf4Args a) {
  __shared__ float code[16];
  __shared__ float dyn[DoubleQuant ? 256 : 1];
  for (int i = threadIdx.x; i < 16; i += blockDim.x) code[i] = a.code[i];
  if (DoubleQuant)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) dyn[i] = a.dynamic_map[i];
  __syncthreads();
  const int64_t bytes = (a.numel + 1) / 2;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < bytes; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = 2 * k, b = e / kNf4BlockSize;
    float absmax;
    if (DoubleQuant)
      absmax = __fadd_rn(__fmul_rn(dyn[a.absmax_q[b]], a.absmax2[b / kNf4NestedBlockSize]), a.offset);
    else
      absmax = a.absmax[b];
    const uint8_t byte = a.packed[k];
    const float w0 = __fmul_rn(code[byte >> 4], absmax), w1 = __fmul_rn(code[byte & 0x0f], absmax);
    const bool pair = e + 1 < a.numel;  // an odd count: the last byte's low nibble is padding
    if (Bf16) {
      uint16_t* o = static_cast<uint16_t*>(out);
      if (pair)  // 4-byte aligned: e is even
        reinterpret_cast<uint32_t*>(o)[k] = uint32_t(to_bf16_bits(w0)) | uint32_t(to_bf16_bits(w1)) << 16;
      else
        o[e] = to_bf16_bits(w0);
    } else {
      float* o = static_cast<float*>(out);
      if (pair)  // 8-byte aligned: e is even
        reinterpret_cast<float2*>(o)[k] = make_float2(w0, w1);
      else
        o[e] = w0;
    }
  }
}

template <typename T>
const T* device_data(const core::Tensor& t, int64_t want, const char* what) {
  core::check(t.numel() >= want && (want == 0 || t.raw() != nullptr), "nf4_dequantize",
              std::string(what) + " holds " + std::to_string(t.numel()) + " values, expected " + std::to_string(want),
              "build the device copy with kernels::to_device(FrozenWeight)");
  return static_cast<const T*>(t.raw());
}

}  // namespace

void nf4_dequantize(void* out, bool bf16, const DeviceNf4& w, CudaState& s) {
  const int64_t numel = w.N * w.K;
  if (numel <= 0) return;
  const int64_t blocks = (numel + kNf4BlockSize - 1) / kNf4BlockSize;
  core::check((reinterpret_cast<uintptr_t>(out) & 7) == 0, "nf4_dequantize", "the output is not 8-byte aligned");
  Nf4Args a{};
  a.packed = device_data<uint8_t>(w.packed, (numel + 1) / 2, "packed");
  a.code = device_data<float>(w.code, 16, "code");
  a.numel = numel;
  if (w.double_quant) {
    a.absmax_q = device_data<uint8_t>(w.absmax_q, blocks, "absmax_q");
    a.absmax2 = device_data<float>(w.absmax2, (blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize, "absmax2");
    a.dynamic_map = device_data<float>(w.dynamic_map, 256, "dynamic_map");
    a.offset = w.absmax_offset;
  } else {
    a.absmax = device_data<float>(w.absmax, blocks, "absmax");
  }
  const unsigned grid = grid_for((numel + 1) / 2, kThreads);
  if (w.double_quant) {
    if (bf16)
      nf4_dequantize_kernel<true, true><<<grid, kThreads, 0, s.stream>>>(out, a);
    else
      nf4_dequantize_kernel<true, false><<<grid, kThreads, 0, s.stream>>>(out, a);
  } else {
    if (bf16)
      nf4_dequantize_kernel<false, true><<<grid, kThreads, 0, s.stream>>>(out, a);
    else
      nf4_dequantize_kernel<false, false><<<grid, kThreads, 0, s.stream>>>(out, a);
  }
  ZL_CUDA_LAUNCHED();
}

}  // namespace zerolora::kernels::cuda
