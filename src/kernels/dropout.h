// The LoRA dropout mask: counter-based, so the same (seed, slot, element) gives the same decision in the
// forward, the backward and a checkpointed recompute, on the CPU and on the GPU, with no mask stored.
// Element n = m * in + i is dropped when the top 24 bits of a 32-bit hash of (n, seed, slot) fall below
// p * 2^24. All-integer 32-bit arithmetic (murmur3's finaliser twice), so the mask loops vectorise.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ZL_HOST_DEVICE __host__ __device__
#else
#define ZL_HOST_DEVICE
#endif

namespace zerolora::kernels {

struct DropoutMask {
  uint32_t key_lo = 0, key_hi = 0, threshold = 0;
  float keep_scale = 1.0f;  // 1 / (1 - p)
  DropoutMask() = default;
  DropoutMask(uint64_t seed, int slot_index, double p);
  ZL_HOST_DEVICE static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
  }
  ZL_HOST_DEVICE inline bool keep(uint64_t n) const {
    const uint32_t h = fmix32(fmix32(key_lo ^ uint32_t(n)) ^ key_hi ^ uint32_t(n >> 32));
    return (h >> 8) >= threshold;
  }
  // 0 (dropped) or 1 / (1 - p)
  ZL_HOST_DEVICE inline float multiplier(uint64_t n) const { return keep(n) ? keep_scale : 0.0f; }
};

}  // namespace zerolora::kernels
