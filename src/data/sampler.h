// Which samples each rank visits in an epoch, with the semantics of PyTorch's DistributedSampler
// (drop_last=False), which HF Trainer uses under data parallelism:
//   indices = a permutation of 0..n-1 seeded by seed + epoch (or 0..n-1 without shuffle);
//   padded by repeating indices from the start to a multiple of world;
//   rank r takes indices[r], indices[r + world], ...  -> every rank gets ceil(n / world) indices.
// torch.randperm cannot be reproduced without torch, so the permutation is our own, documented and
// platform-independent: Fisher-Yates driven by std::mt19937_64 seeded with seed + epoch, with
// unbiased bounded draws by rejection (not std::uniform_int_distribution, whose algorithm differs
// between standard libraries).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace zerolora::data {

std::vector<size_t> epoch_indices(size_t n, int world, int rank, uint64_t seed, int64_t epoch, bool shuffle = true);

// The shuffled order of 0..n-1 for (seed, epoch), before padding and slicing.
std::vector<size_t> shuffled_order(size_t n, uint64_t seed, int64_t epoch);

}  // namespace zerolora::data
