#include "core/dtype.h"

#include <immintrin.h>

#include "core/error.h"

namespace zerolora::core {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const struct { const char* n; DType d; } table[] = {
      {"F32", DType::F32}, {"F64", DType::F64}, {"BF16", DType::BF16}, {"F16", DType::F16},
      {"U8", DType::U8},   {"I32", DType::I32}, {"I64", DType::I64}};
  for (const auto& e : table)
    if (name == e.n) { *out = e.d; return true; }
  return false;
}

float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
uint16_t f32_to_f16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

namespace {

// Everything goes through f32; 8 lanes at a time with AVX2/F16C.
void load_f32(const void* src, DType dt, size_t i, size_t n, float* out) {
  switch (dt) {
    case DType::F32: std::memcpy(out, static_cast<const float*>(src) + i, n * 4); break;
    case DType::F64:
      for (size_t k = 0; k < n; ++k) out[k] = float(static_cast<const double*>(src)[i + k]);
      break;
    case DType::BF16:
      for (size_t k = 0; k < n; ++k) out[k] = bf16_to_f32(static_cast<const uint16_t*>(src)[i + k]);
      break;
    case DType::F16:
      for (size_t k = 0; k < n; ++k) out[k] = f16_to_f32(static_cast<const uint16_t*>(src)[i + k]);
      break;
    default: throw Error("convert", std::string("unsupported source dtype ") + dtype_name(dt));
  }
}

void store_f32(const float* in, size_t n, void* dst, DType dt, size_t i) {
  switch (dt) {
    case DType::F32: std::memcpy(static_cast<float*>(dst) + i, in, n * 4); break;
    case DType::F64:
      for (size_t k = 0; k < n; ++k) static_cast<double*>(dst)[i + k] = in[k];
      break;
    case DType::BF16:
      for (size_t k = 0; k < n; ++k) static_cast<uint16_t*>(dst)[i + k] = f32_to_bf16(in[k]);
      break;
    case DType::F16:
      for (size_t k = 0; k < n; ++k) static_cast<uint16_t*>(dst)[i + k] = f32_to_f16(in[k]);
      break;
    default: throw Error("convert", std::string("unsupported destination dtype ") + dtype_name(dt));
  }
}

void bf16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
    __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(w));
  }
  for (; k < n; ++k) dst[k] = bf16_to_f32(src[k]);
}

void f32_to_bf16_avx2(const float* src, uint16_t* dst, size_t n) {
  size_t k = 0;
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
  for (; k + 8 <= n; k += 8) {
    __m256 f = _mm256_loadu_ps(src + k);
    __m256i u = _mm256_castps_si256(f);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)), 16);
    // NaN lanes: keep the high half with the quiet bit set
    __m256 isnan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
    __m256i nanv = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, nanv, _mm256_castps_si256(isnan));
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), packed);
  }
  for (; k < n; ++k) dst[k] = f32_to_bf16(src[k]);
}

void f16_to_f32_f16c(const uint16_t* src, float* dst, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < n; ++k) dst[k] = f16_to_f32(src[k]);
}

void f32_to_f16_f16c(const float* src, uint16_t* dst, size_t n) {
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  for (; k < n; ++k) dst[k] = f32_to_f16(src[k]);
}

void convert_range(const void* src, DType sd, void* dst, DType dd, size_t begin, size_t end) {
  size_t n = end - begin;
  if (sd == dd) {
    std::memcpy(static_cast<char*>(dst) + begin * dtype_size(dd),
                static_cast<const char*>(src) + begin * dtype_size(sd), n * dtype_size(sd));
    return;
  }
  if (sd == DType::BF16 && dd == DType::F32)
    return bf16_to_f32_avx2(static_cast<const uint16_t*>(src) + begin, static_cast<float*>(dst) + begin, n);
  if (sd == DType::F32 && dd == DType::BF16)
    return f32_to_bf16_avx2(static_cast<const float*>(src) + begin, static_cast<uint16_t*>(dst) + begin, n);
  if (sd == DType::F16 && dd == DType::F32)
    return f16_to_f32_f16c(static_cast<const uint16_t*>(src) + begin, static_cast<float*>(dst) + begin, n);
  if (sd == DType::F32 && dd == DType::F16)
    return f32_to_f16_f16c(static_cast<const float*>(src) + begin, static_cast<uint16_t*>(dst) + begin, n);
  if (sd == DType::F64 && dd == DType::F64) return;
  float tmp[256];
  for (size_t i = begin; i < end; i += 256) {
    size_t m = std::min<size_t>(256, end - i);
    if (sd == DType::F64 && dd == DType::F64) continue;
    load_f32(src, sd, i, m, tmp);
    if (dd == DType::F64 && sd != DType::F64) {
      for (size_t k = 0; k < m; ++k) static_cast<double*>(dst)[i + k] = tmp[k];
    } else {
      store_f32(tmp, m, dst, dd, i);
    }
  }
}

}  // namespace

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  if (src_dtype == DType::F64 && dst_dtype == DType::F64) {
    std::memcpy(dst, src, n * 8);
    return;
  }
  const size_t chunk = 1 << 16;
  if (n <= chunk) return convert_range(src, src_dtype, dst, dst_dtype, 0, n);
  long nchunks = long((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
  for (long c = 0; c < nchunks; ++c)
    convert_range(src, src_dtype, dst, dst_dtype, size_t(c) * chunk, std::min(n, size_t(c + 1) * chunk));
}

}  // namespace zerolora::core
