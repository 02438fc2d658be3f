// Element types and conversions between f32, f64, bf16 and f16.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace zerolora::core {

enum class DType : uint8_t { F32, F64, BF16, F16, U8, I32, I64 };

size_t dtype_size(DType dt);
// safetensors spelling: "F32", "F64", "BF16", "F16", "U8", "I32", "I64"
const char* dtype_name(DType dt);
// parses the safetensors spelling; returns false for anything else
bool dtype_from_name(const std::string& name, DType* out);

// Scalar conversions. bf16/f16 are stored as raw uint16_t bits.
// f32 -> bf16 rounds to nearest even and keeps NaN a (quiet) NaN, as PyTorch does.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Bulk conversion of n elements between floating dtypes (F32, F64, BF16, F16), vectorised and threaded.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

// Element type <-> C++ type.
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

}  // namespace zerolora::core
