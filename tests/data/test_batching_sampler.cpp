// Padding, packing and the distributed sampler.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "data/batching.h"
#include "data/sampler.h"

using namespace zerolora;
using namespace zerolora::data;

namespace {

Sample sample(std::vector<int32_t> ids, std::vector<int32_t> labels, const std::string& id = "s") {
  return Sample{id, 0, std::move(ids), std::move(labels)};
}

constexpr int32_t I = kIgnoreIndex;

}  // namespace

TEST(Collate, PadsToModelMaxLengthLikeFastChat) {
  const Sample a = sample({1, 5, 6, 7}, {I, I, 6, 7});
  const Sample b = sample({1, 8}, {I, 8});
  const Batch batch = collate({&a, &b}, Padding::MaxLength, 6, 0);
  EXPECT_EQ(batch.B, 2);
  EXPECT_EQ(batch.T, 6);
  EXPECT_EQ(batch.input_ids, (std::vector<int32_t>{1, 5, 6, 7, 0, 0, 1, 8, 0, 0, 0, 0}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{I, I, 6, 7, I, I, I, 8, I, I, I, I}));
  EXPECT_EQ(batch.lengths, (std::vector<int32_t>{4, 2}));
  EXPECT_EQ(batch.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(batch.kv_begin, std::vector<int32_t>(12, 0));
  EXPECT_EQ(batch.target_tokens, 3);  // labels[1:] != -100: 6, 7 and 8
  EXPECT_EQ(batch.samples, 2);
}

TEST(Collate, DynamicPaddingToTheLongestRow) {
  const Sample a = sample({1, 5, 6}, {I, 5, 6});
  const Sample b = sample({1}, {I});
  const Batch batch = collate({&a, &b}, Padding::Longest, 512, 9);
  EXPECT_EQ(batch.T, 3);
  EXPECT_EQ(batch.input_ids, (std::vector<int32_t>{1, 5, 6, 1, 9, 9}));
  EXPECT_EQ(batch.target_tokens, 2);
}

TEST(Collate, TooLongSampleIsAnError) {
  const Sample a = sample({1, 2, 3}, {I, 2, 3}, "long_one");
  try {
    collate({&a}, Padding::MaxLength, 2, 0);
    FAIL();
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("long_one"), std::string::npos);
  }
  EXPECT_THROW(collate({&a}, Padding::Longest, 8, -1), core::Error);  // Llama 3 has no pad token
}

TEST(CollatePacked, BlockDiagonalAttentionAndRestartingPositions) {
  const Sample a = sample({1, 5, 6}, {I, 5, 6});
  const Sample b = sample({1, 7}, {7, 7});  // a first label that is set: dropped when packed
  const Sample c = sample({1, 8, 9, 10}, {I, I, 9, 10});
  const Batch batch = collate_packed({{&a, &b}, {&c}}, Padding::MaxLength, 6, 0);
  EXPECT_EQ(batch.B, 2);
  EXPECT_EQ(batch.T, 6);
  EXPECT_EQ(batch.samples, 3);
  EXPECT_EQ(batch.input_ids, (std::vector<int32_t>{1, 5, 6, 1, 7, 0, 1, 8, 9, 10, 0, 0}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{I, 5, 6, I, 7, I, I, I, 9, 10, I, I}));
  EXPECT_EQ(batch.positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(batch.kv_begin, (std::vector<int32_t>{0, 0, 0, 3, 3, 5, 0, 0, 0, 0, 4, 4}));
  EXPECT_EQ(batch.lengths, (std::vector<int32_t>{5, 4}));
  EXPECT_EQ(batch.target_tokens, 5);  // 5, 6, 7 | 9, 10
}

TEST(CollatePacked, PlanPackingIsGreedyInOrder) {
  const std::vector<size_t> lengths = {3, 2, 4, 1, 5, 2};
  const auto rows = plan_packing({0, 1, 2, 3, 4, 5}, [&](size_t i) { return lengths[i]; }, 5);
  EXPECT_EQ(rows, (std::vector<std::vector<size_t>>{{0, 1}, {2, 3}, {4}, {5}}));
  const auto shuffled = plan_packing({5, 3, 0}, [&](size_t i) { return lengths[i]; }, 6);
  EXPECT_EQ(shuffled, (std::vector<std::vector<size_t>>{{5, 3, 0}}));
  EXPECT_THROW(plan_packing({4}, [&](size_t i) { return lengths[i]; }, 4), core::Error);
}

TEST(Sampler, RanksAreDisjointAndCoverEverySample) {
  const size_t n = 103;
  const int world = 4;
  std::multiset<size_t> seen;
  for (int r = 0; r < world; ++r) {
    const auto mine = epoch_indices(n, world, r, 42, 0);
    EXPECT_EQ(mine.size(), 26u);  // ceil(103 / 4)
    seen.insert(mine.begin(), mine.end());
  }
  EXPECT_EQ(seen.size(), 104u);
  for (size_t i = 0; i < n; ++i) EXPECT_GE(seen.count(i), 1u) << i;
  // one index repeated to fill the last slice, taken from the start of the shuffled order
  const auto order = shuffled_order(n, 42, 0);
  EXPECT_EQ(seen.count(order[0]), 2u);
}

TEST(Sampler, RankTakesEveryWorldthIndex) {
  const auto order = shuffled_order(10, 7, 3);
  const auto rank1 = epoch_indices(10, 3, 1, 7, 3);
  // padded order: order + order[0:2]; rank 1 takes positions 1, 4, 7, 10
  EXPECT_EQ(rank1, (std::vector<size_t>{order[1], order[4], order[7], order[0]}));
  EXPECT_EQ(epoch_indices(5, 2, 0, 0, 0, false), (std::vector<size_t>{0, 2, 4}));
  EXPECT_EQ(epoch_indices(5, 2, 1, 0, 0, false), (std::vector<size_t>{1, 3, 0}));
  // more ranks than samples: the list is repeated as often as needed
  EXPECT_EQ(epoch_indices(2, 5, 4, 0, 0, false), (std::vector<size_t>{0}));
}

TEST(Sampler, ShuffleIsSeededPerEpochAndAPermutation) {
  const auto e0 = shuffled_order(1000, 42, 0);
  EXPECT_EQ(e0, shuffled_order(1000, 42, 0));
  EXPECT_NE(e0, shuffled_order(1000, 42, 1));
  EXPECT_EQ(shuffled_order(1000, 42, 1), shuffled_order(1000, 43, 0));  // seeded by seed + epoch, as HF
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);
  // the documented generator: mt19937_64(seed + epoch), Fisher-Yates from the top with rejection draws
  EXPECT_EQ(shuffled_order(5, 0, 0), shuffled_order(5, 0, 0));
  EXPECT_THROW(epoch_indices(5, 2, 2, 0, 0), core::Error);
  EXPECT_TRUE(epoch_indices(0, 2, 0, 0, 0).empty());
}

TEST(Sampler, ShuffleIsRoughlyUniform) {
  // position of element 0 over many seeds: each of 4 positions about 1/4 of the time
  std::vector<int> where(4, 0);
  for (uint64_t seed = 0; seed < 4000; ++seed) {
    const auto order = shuffled_order(4, seed, 0);
    where[std::find(order.begin(), order.end(), 0) - order.begin()] += 1;
  }
  for (int count : where) EXPECT_NEAR(count, 1000, 120);
}
