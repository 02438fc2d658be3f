// The ZeRO partition plans: pure arithmetic, checked against hand-computed cases and for exact
// coverage (every element owned by exactly one rank) over many sizes.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "dist/zero_partition.h"

using namespace zerolora::dist;
using zerolora::core::Error;

TEST(FlatPartition, PadsToMultipleOfTwiceWorld) {
  FlatPartition p(1001, 4);  // 1001 -> 1008 (multiple of 8), 252 per rank
  EXPECT_EQ(p.padded_numel(), 1008);
  EXPECT_EQ(p.partition_size(), 252);
  EXPECT_EQ(p.rank_range(0), (Range{0, 252}));
  EXPECT_EQ(p.rank_range(3), (Range{756, 1008}));
  EXPECT_EQ(p.rank_real_range(3), (Range{756, 1001}));  // the padding lives in the last rank
  EXPECT_EQ(FlatPartition(16, 4).padded_numel(), 16);   // already a multiple of 2*world
  EXPECT_EQ(FlatPartition(12, 4).padded_numel(), 16);   // divisible by world is not enough
  EXPECT_EQ(FlatPartition(0, 3).padded_numel(), 0);
}

TEST(FlatPartition, FewerElementsThanRanks) {
  FlatPartition p(3, 4);  // padded to 8: P = 2
  EXPECT_EQ(p.partition_size(), 2);
  EXPECT_EQ(p.rank_real_range(0), (Range{0, 2}));
  EXPECT_EQ(p.rank_real_range(1), (Range{2, 3}));
  EXPECT_TRUE(p.rank_real_range(2).empty());
  EXPECT_TRUE(p.rank_real_range(3).empty());
}

TEST(FlatPartition, WorldOneOwnsEverything) {
  FlatPartition p(7, 1);
  EXPECT_EQ(p.padded_numel(), 8);
  EXPECT_EQ(p.rank_range(0), (Range{0, 8}));
  EXPECT_EQ(p.rank_real_range(0), (Range{0, 7}));
  auto slices = p.owners_of(2, 5);
  ASSERT_EQ(slices.size(), 1u);
  EXPECT_EQ(slices[0].flat, (Range{2, 7}));
}

TEST(FlatPartition, SlicesTileTheBufferExactly) {
  for (int world = 1; world <= 9; ++world) {
    for (int64_t numel : {0, 1, 2, 5, 17, 64, 1000, 1001, 65537}) {
      FlatPartition p(numel, world);
      SCOPED_TRACE("numel " + std::to_string(numel) + " world " + std::to_string(world));
      EXPECT_EQ(p.padded_numel() % (2 * world), 0);
      EXPECT_GE(p.padded_numel(), numel);
      EXPECT_LT(p.padded_numel() - numel, 2 * world);
      int64_t next = 0, next_real = 0;
      for (int r = 0; r < world; ++r) {
        Range range = p.rank_range(r), real = p.rank_real_range(r);
        EXPECT_EQ(range.begin, next);
        EXPECT_EQ(range.size(), p.partition_size());
        if (!real.empty()) {
          EXPECT_EQ(real.begin, next_real);
          next_real = real.end;
        }
        next = range.end;
        for (int64_t i = range.begin; i < range.end; i += std::max<int64_t>(1, range.size() / 3))
          EXPECT_EQ(p.owner_of(i), r);
      }
      EXPECT_EQ(next, p.padded_numel());
      EXPECT_EQ(next_real, numel);
    }
  }
}

TEST(FlatPartition, ParamStraddlingRanks) {
  FlatPartition p(1001, 4);  // P = 252
  auto slices = p.owners_of(200, 400);
  ASSERT_EQ(slices.size(), 3u);
  EXPECT_EQ(slices[0].rank, 0);
  EXPECT_EQ(slices[0].flat, (Range{200, 252}));
  EXPECT_EQ(slices[0].offset_in_param, 0);
  EXPECT_EQ(slices[0].offset_in_partition, 200);
  EXPECT_EQ(slices[1].rank, 1);
  EXPECT_EQ(slices[1].flat, (Range{252, 504}));
  EXPECT_EQ(slices[1].offset_in_param, 52);
  EXPECT_EQ(slices[1].offset_in_partition, 0);
  EXPECT_EQ(slices[2].rank, 2);
  EXPECT_EQ(slices[2].flat, (Range{504, 600}));
  EXPECT_EQ(slices[2].offset_in_param, 304);
  EXPECT_EQ(slices[2].offset_in_partition, 0);
  EXPECT_TRUE(p.owners_of(5, 0).empty());
  EXPECT_THROW(p.owners_of(1000, 9), Error);  // past the padded end
}

TEST(FlatPartition, OwnedSlicesTileRandomParams) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    int world = 1 + int(rng() % 6);
    std::vector<int64_t> sizes(1 + rng() % 12);
    int64_t numel = 0;
    for (auto& n : sizes) numel += (n = int64_t(rng() % 300));
    FlatPartition p(numel, world);
    int64_t offset = 0;
    for (int64_t n : sizes) {
      int64_t covered = offset;
      for (const OwnedSlice& s : p.owners_of(offset, n)) {
        EXPECT_EQ(s.flat.begin, covered);
        EXPECT_GT(s.flat.size(), 0);
        EXPECT_EQ(s.offset_in_param, s.flat.begin - offset);
        EXPECT_EQ(s.offset_in_partition, s.flat.begin - p.rank_range(s.rank).begin);
        EXPECT_LE(s.flat.end, p.rank_range(s.rank).end);
        covered = s.flat.end;
      }
      EXPECT_EQ(covered, offset + n);
      offset += n;
    }
  }
}

TEST(FlatPartition, CountsPerRankOfARange) {
  FlatPartition p(1001, 4);  // P = 252
  EXPECT_EQ(p.counts_per_rank({250, 510}), (std::vector<int64_t>{2, 252, 6, 0}));
  EXPECT_EQ(p.counts_per_rank({0, 1008}), (std::vector<int64_t>{252, 252, 252, 252}));
  EXPECT_EQ(p.counts_per_rank({300, 300}), (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_THROW(p.counts_per_rank({0, 1009}), Error);
}

TEST(FlatPartition, RejectsBadArguments) {
  EXPECT_THROW(FlatPartition(10, 0), Error);
  EXPECT_THROW(FlatPartition(-1, 2), Error);
  FlatPartition p(10, 2);
  EXPECT_THROW(p.rank_range(2), Error);
  EXPECT_THROW(p.owner_of(12), Error);
}

TEST(GradientBuckets, ReverseOrderClosedAtParamBoundaries) {
  std::vector<int64_t> params{10, 20, 30, 40};  // 100 elements, no padding with world 2
  auto buckets = plan_gradient_buckets(params, FlatPartition(100, 2).padded_numel(), 50);
  ASSERT_EQ(buckets.size(), 3u);
  // 40 ready first; 30 would overflow it, so it goes out alone.
  EXPECT_EQ(buckets[0].flat, (Range{60, 100}));
  EXPECT_EQ(buckets[0].ready_after_param, 3);
  EXPECT_EQ(buckets[1].flat, (Range{10, 60}));  // 30 + 20 = exactly 50
  EXPECT_EQ(buckets[1].ready_after_param, 1);
  EXPECT_EQ(buckets[2].flat, (Range{0, 10}));
  EXPECT_EQ(buckets[2].ready_after_param, 0);
}

TEST(GradientBuckets, OversizedParamSplitAndPaddingFirst) {
  std::vector<int64_t> params{5, 23, 3};  // 31 elements, padded to 32 for world 2
  auto buckets = plan_gradient_buckets(params, 32, 10);
  ASSERT_EQ(buckets.size(), 4u);
  EXPECT_EQ(buckets[0].flat, (Range{28, 32}));  // padding + the 3-element param
  EXPECT_EQ(buckets[0].ready_after_param, 2);
  EXPECT_EQ(buckets[1].flat, (Range{18, 28}));  // the 23-element param in pieces of <= 10
  EXPECT_EQ(buckets[1].ready_after_param, 1);
  EXPECT_EQ(buckets[2].flat, (Range{8, 18}));
  EXPECT_EQ(buckets[2].ready_after_param, 1);
  EXPECT_EQ(buckets[3].flat, (Range{0, 8}));  // its last 3 elements share with the first param
  EXPECT_EQ(buckets[3].ready_after_param, 0);
}

TEST(GradientBuckets, OnlyPaddingAndEmptyParams) {
  std::vector<int64_t> none;
  auto buckets = plan_gradient_buckets(none, 4, 100);
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].flat, (Range{0, 4}));
  EXPECT_EQ(buckets[0].ready_after_param, -1);
  std::vector<int64_t> with_empty{0, 6, 0};
  buckets = plan_gradient_buckets(with_empty, 8, 100);
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].flat, (Range{0, 8}));
  EXPECT_EQ(buckets[0].ready_after_param, 1);
  EXPECT_TRUE(plan_gradient_buckets(none, 0, 10).empty());
  EXPECT_THROW(plan_gradient_buckets(with_empty, 8, 0), Error);
  EXPECT_THROW(plan_gradient_buckets(with_empty, 5, 10), Error);  // padded smaller than params
}

TEST(GradientBuckets, RandomPlansTileTheBufferWithinBucketSize) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> params(1 + rng() % 10);
    int64_t numel = 0;
    for (auto& n : params) numel += (n = int64_t(rng() % 120));
    int world = 1 + int(rng() % 4);
    FlatPartition flat(numel, world);
    int64_t bucket = 1 + int64_t(rng() % 100);
    auto buckets = plan_gradient_buckets(params, flat.padded_numel(), bucket);
    int64_t expected_end = flat.padded_numel();
    for (const auto& b : buckets) {
      EXPECT_EQ(b.flat.end, expected_end);  // descending, contiguous
      EXPECT_GT(b.flat.size(), 0);
      EXPECT_LE(b.flat.size(), bucket);
      // ready_after_param = the lowest-index param with elements in the bucket
      int64_t lowest = -1, offset = 0;
      for (int64_t p = 0; p < int64_t(params.size()) && lowest < 0; offset += params[p], ++p)
        if (params[p] > 0 && offset < b.flat.end && offset + params[p] > b.flat.begin) lowest = p;
      EXPECT_EQ(b.ready_after_param, lowest);
      expected_end = b.flat.begin;
    }
    EXPECT_EQ(expected_end, 0);
  }
}

TEST(TensorPartition, CeilSplitWithPadding) {
  TensorPartition t(10, 4);  // P = 3, padded 12
  EXPECT_EQ(t.partition_size(), 3);
  EXPECT_EQ(t.padded_numel(), 12);
  EXPECT_EQ(t.rank_range(3), (Range{9, 12}));
  EXPECT_EQ(t.rank_real_range(3), (Range{9, 10}));
  EXPECT_EQ(TensorPartition(8, 4).partition_size(), 2);  // divisible: no padding
  EXPECT_EQ(TensorPartition(8, 4).padded_numel(), 8);
  TensorPartition small(2, 4);  // fewer elements than ranks
  EXPECT_EQ(small.partition_size(), 1);
  EXPECT_EQ(small.rank_real_range(1), (Range{1, 2}));
  EXPECT_TRUE(small.rank_real_range(2).empty());
  EXPECT_TRUE(small.rank_real_range(3).empty());
  EXPECT_EQ(TensorPartition(5, 1).partition_size(), 5);
  EXPECT_EQ(TensorPartition(0, 3).partition_size(), 0);
  EXPECT_THROW(TensorPartition(5, 0), Error);
}

TEST(TensorPartition, RealRangesTileTheTensor) {
  for (int world = 1; world <= 8; ++world) {
    for (int64_t numel : {0, 1, 3, 7, 8, 100, 4097}) {
      TensorPartition t(numel, world);
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(t.rank_range(r).begin, r * t.partition_size());
        Range real = t.rank_real_range(r);
        if (real.empty()) continue;
        EXPECT_EQ(real.begin, next);
        next = real.end;
      }
      EXPECT_EQ(next, numel) << "numel " << numel << " world " << world;
      EXPECT_LT(t.padded_numel() - numel, world);
    }
  }
}

TEST(Stage3Plan, PersistenceThresholds) {
  std::vector<int64_t> numels{100, 5000, 50, 200000, 80};
  auto plan = plan_stage3_partitions(numels, 4, 1000);
  std::vector<bool> persistent;
  for (const auto& t : plan) persistent.push_back(t.persistent());
  EXPECT_EQ(persistent, (std::vector<bool>{true, false, true, false, true}));
  EXPECT_EQ(plan[1].partition_size(), 1250);
  // The model-wide cap: 100 + 50 = 150 fits in 200, adding 80 would not, so the 80 is skipped.
  plan = plan_stage3_partitions(numels, 4, 1000, 200);
  persistent.clear();
  for (const auto& t : plan) persistent.push_back(t.persistent());
  EXPECT_EQ(persistent, (std::vector<bool>{true, false, true, false, false}));
  // The spec's example: LoRA A of r=8, hidden 4096 falls under HF's auto threshold 10 * hidden.
  std::vector<int64_t> lora{8 * 4096, 4096 * 4096};
  plan = plan_stage3_partitions(lora, 8, 10 * 4096);
  EXPECT_TRUE(plan[0].persistent());
  EXPECT_FALSE(plan[1].persistent());
}
