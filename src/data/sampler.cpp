#include "data/sampler.h"

#include <numeric>
#include <random>
#include <string>

#include "core/error.h"

namespace zerolora::data {

namespace {

// Uniform integer in [0, bound] from 64-bit draws, rejecting the top partial range (no modulo bias).
uint64_t uniform_at_most(std::mt19937_64& rng, uint64_t bound) {
  if (bound == 0) return 0;
  const uint64_t range = bound + 1;
  if (range == 0) return rng();  // bound == 2^64 - 1
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % range);
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % range;
}

}  // namespace

std::vector<size_t> shuffled_order(size_t n, uint64_t seed, int64_t epoch) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (size_t i = n; i > 1; --i) {
    const size_t j = static_cast<size_t>(uniform_at_most(rng, i - 1));
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

std::vector<size_t> epoch_indices(size_t n, int world, int rank, uint64_t seed, int64_t epoch, bool shuffle) {
  core::check(world >= 1 && rank >= 0 && rank < world, "epoch_indices",
              "rank " + std::to_string(rank) + " of world " + std::to_string(world) + " is not valid",
              "use 0 <= rank < world");
  if (n == 0) return {};
  std::vector<size_t> indices = shuffle ? shuffled_order(n, seed, epoch) : std::vector<size_t>(n);
  if (!shuffle) std::iota(indices.begin(), indices.end(), size_t{0});

  const size_t per_rank = (n + static_cast<size_t>(world) - 1) / static_cast<size_t>(world);
  const size_t total = per_rank * static_cast<size_t>(world);
  for (size_t k = n; k < total; ++k) indices.push_back(indices[k - n]);  // repeat from the start, as often as needed

  std::vector<size_t> mine;
  mine.reserve(per_rank);
  for (size_t k = static_cast<size_t>(rank); k < total; k += static_cast<size_t>(world)) mine.push_back(indices[k]);
  return mine;
}

}  // namespace zerolora::data
