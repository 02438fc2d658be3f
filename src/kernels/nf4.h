// QLoRA's 4-bit NormalFloat (NF4) frozen weights with double quantisation, as bitsandbytes stores them
// (deepspeed-peft-spec §5), and the linear layers that multiply through them without ever holding the
// whole dequantised model: a tile of W rows is dequantised into a reused thread-local buffer and handed to
// the GEMM (forward and backward alike).
//
// Layout (bitsandbytes quantize_4bit, quant_type "nf4", blocksize 64, compress_statistics=True):
//   W [N, K] is flattened row-major and cut into blocks of 64 elements (the last one partial);
//   packed[k] = code(w[2k]) << 4 | code(w[2k+1])   element 2k in the HIGH nibble; an odd count is
//                                                    padded with the code of 0.0
//   code(w) = index of the nearest NF4 value to w * (1/absmax_b): the number of bitsandbytes' decision
//             thresholds (the midpoints, as fp32 literals) below it; 0 when absmax_b = 0, which is what
//             bitsandbytes' kernels produce for 0 * inf = NaN (so with double quantisation an all-zero
//             block comes back as -absmax_b, the small error of its quantised zero absmax, not as 0)
//   double quantisation: offset = mean(absmax) (summed in double, rounded once); (absmax - offset) in
//   blocks of 256 is quantised the same way (reciprocal of the block's max |.|, nearest value by fp32
//   midpoints) to the signed 8-bit dynamic map, with one fp32 absmax2 per block of 256;
//   dequantised absmax_b = dynamic_map[absmax_q[b]] * absmax2[b / 256] + offset  (two fp32 roundings)
//   dequantised w        = nf4_code[q] * absmax_b                                   (one fp32 rounding)
// With double_quant = false the fp32 absmax is kept as is (HF's BitsAndBytesConfig default).
//
// Memory: 4 bits + 8/64 + 32/(64*256) bits per parameter = 0.5159 bytes (0.5625 without double quant).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace zerolora::kernels {

constexpr int64_t kNf4BlockSize = 64;         // bnb_4bit blocksize (the QLoRA value; the only one here)
constexpr int64_t kNf4NestedBlockSize = 256;  // blocks of absmax values per fp32 absmax2

// The 16 NF4 values (spec §5), index = 4-bit code: exact 0 at 7, -1 at 0, +1 at 15.
const std::array<float, 16>& nf4_code();

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted values,
// 0 at index 127, +1.0 at 255, smallest -0.99297 (there is no -1).
const std::array<float, 256>& nf4_dynamic_map();

struct Nf4Weight {
  int64_t N = 0, K = 0;
  std::vector<uint8_t> packed;  // ceil(N*K/2) bytes, see the layout above
  bool double_quant = true;
  std::vector<float> absmax;      // one per 64-block, only when !double_quant
  std::vector<uint8_t> absmax_q;  // one per 64-block, only when double_quant: index into nf4_dynamic_map()
  std::vector<float> absmax2;     // one per 256 blocks, only when double_quant
  float absmax_offset = 0.0f;     // mean of the original absmax values, only when double_quant
  // The dtype W is dequantised to for its GEMMs (bnb_4bit_compute_dtype): F32 (HF's default) or BF16
  // (the QLoRA recipe: weight and input rounded to bf16, products summed in fp32).
  core::DType compute_dtype = core::DType::F32;
  // Optional bias [N] (Qwen2's q/k/v projections), kept in fp32 and added by nf4_linear_forward.
  std::vector<float> bias;

  int64_t numel() const { return N * K; }
  int64_t num_blocks() const { return (numel() + kNf4BlockSize - 1) / kNf4BlockSize; }
  // The scale of 64-block b after undoing the double quantisation (bit-identical to bitsandbytes).
  float block_absmax(int64_t b) const;
  // Bytes held for the weight: packed codes + absmax (codes, absmax2 and the offset with double quant).
  int64_t storage_bytes() const;
  double bytes_per_param() const { return numel() ? double(storage_bytes()) / double(numel()) : 0.0; }
  // Throws core::Error (where = `where`) unless the vector sizes fit N, K and double_quant, the bias is
  // empty or [N], and compute_dtype is F32 or BF16. For weights read from a file.
  void validate(const char* where) const;
};

// An Nf4Weight's arrays in a device's memory (kernels::to_device(FrozenWeight)); the same layout.
struct DeviceNf4 {
  int64_t N = 0, K = 0;
  bool double_quant = true;
  core::DType compute_dtype = core::DType::F32;
  float absmax_offset = 0.0f;
  core::Tensor packed;    // U8 [ceil(N*K/2)]
  core::Tensor absmax;    // F32 [blocks], only when !double_quant
  core::Tensor absmax_q;  // U8 [blocks], only when double_quant
  core::Tensor absmax2;   // F32 [ceil(blocks/256)], only when double_quant
  core::Tensor code;      // F32 [16] nf4_code()
  core::Tensor dynamic_map;  // F32 [256] nf4_dynamic_map(), only when double_quant
  core::Tensor bias;      // F32 [N] or empty
};

// Quantises W [N, K] (row-major fp32). Throws core::Error on a NaN/inf element (naming its row and column).
Nf4Weight nf4_quantize(const float* w, int64_t N, int64_t K, bool double_quant = true);

// out [N, K] = the dequantised weight in fp32.
void nf4_dequantize(const Nf4Weight& w, float* out);
// Rows [row0, row0 + rows) of the dequantised weight, out [rows, K]; fp32 or bf16 bits (round to nearest
// even of the fp32 value, as bitsandbytes' bf16 output).
void nf4_dequantize_rows(const Nf4Weight& w, int64_t row0, int64_t rows, float* out);
void nf4_dequantize_rows_bf16(const Nf4Weight& w, int64_t row0, int64_t rows, uint16_t* out);

// out[M, N] = inp[M, K] W^T (+ bias) with W dequantised to w.compute_dtype (a bf16 compute dtype also rounds inp to
// bf16). Equals linear_forward on a FrozenWeight holding the dequantised weight in that dtype, up to the
// order of the fp32 sums. bias [N], when given, is added instead of w.bias (--lora_bias trains it).
void nf4_linear_forward(float* out, const float* inp, const Nf4Weight& w, int64_t M, const float* bias = nullptr);

// dinp[M, K] += dout[M, N] W   (+=; the activation gradient through the frozen weight, no weight grad)
void nf4_linear_backward_input(float* dinp, const float* dout, const Nf4Weight& w, int64_t M);

// How much of W one GEMM call sees: whole rows, about tile_elems dequantised elements (fp32: 4 bytes
// each). Adjustable so that tests reach the tile edges and the portable bf16 path on any CPU.
struct Nf4Tiling {
  // 4 MiB of fp32 (512 rows of K = 2048): fits the L3 of the target CPUs; fewer, larger tiles mean fewer
  // OpenMP fork/join pairs (dequantise, then GEMM) per call
  int64_t tile_elems = int64_t(1) << 20;
  bool bf16_force_portable = false;       // BF16 compute through sgemm even where oneDNN has bf16 matmul
};
Nf4Tiling& nf4_tiling();

}  // namespace zerolora::kernels
