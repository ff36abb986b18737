#include "worker/train/data_plan.h"

#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

TEST(IndexPermutationTest, IsABijectionForManySizes) {
  for (uint64_t n : {1, 2, 3, 7, 64, 100, 1000, 4097}) {
    IndexPermutation permutation(n, /*key=*/42);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t j = permutation(i);
      ASSERT_LT(j, n);
      seen.insert(j);
    }
    EXPECT_EQ(seen.size(), n) << n;
  }
}

TEST(IndexPermutationTest, KeyChangesTheOrderDeterministically) {
  IndexPermutation a(1000, 1), b(1000, 2), a_again(1000, 1);
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(a(i), a_again(i));
    same += a(i) == b(i);
  }
  EXPECT_LT(same, 20);  // independent permutations agree on ~1 position in expectation
}

class DataPlanTest : public ::testing::Test {
 protected:
  static constexpr int64_t kTokens = 1'000'003;
  DataPlan Plan(double fraction, uint64_t seed = 7) {
    auto plan = DataPlan::Create(
        kTokens, {.seed = seed, .validation_fraction = fraction, .block_tokens = 1000});
    EXPECT_TRUE(plan.ok()) << plan.status();
    return *plan;
  }
};

TEST_F(DataPlanTest, HoldsOutAboutTheFractionInWholeBlocks) {
  const DataPlan plan = Plan(0.1);
  const double held_out = static_cast<double>(plan.validation_tokens()) / kTokens;
  EXPECT_GT(held_out, 0.07);
  EXPECT_LT(held_out, 0.13);
  EXPECT_EQ(plan.training_tokens() + plan.validation_tokens(), kTokens);
  EXPECT_EQ(Plan(0.0).validation_tokens(), 0);
}

TEST_F(DataPlanTest, TrainingWindowsNeverTouchValidationTokensAndCoverAnEpochOnce) {
  const DataPlan plan = Plan(0.1);
  for (int64_t seq_len : {50, 128, 999}) {
    const int64_t count = plan.TrainingWindowCount(seq_len);
    ASSERT_GT(count, 0);
    std::set<int64_t> starts;
    // One window per step: an epoch is `count` steps.
    for (int64_t step = 0; step < count; ++step) {
      auto windows = plan.TrainingWindows(/*stage=*/0, seq_len, 1, step, 0, 1);
      ASSERT_TRUE(windows.ok()) << windows.status();
      const Window& w = (*windows)[0];
      EXPECT_EQ(w.length, seq_len + 1);
      EXPECT_FALSE(plan.IsValidationBlock(w.begin / 1000)) << w.begin;
      EXPECT_FALSE(plan.IsValidationBlock((w.begin + w.length - 1) / 1000)) << w.begin;
      starts.insert(w.begin);
    }
    EXPECT_EQ(static_cast<int64_t>(starts.size()), count) << "seq_len " << seq_len;
  }
}

TEST_F(DataPlanTest, ValidationWindowsLieInValidationBlocks) {
  const DataPlan plan = Plan(0.1);
  auto windows = plan.ValidationWindows(128, plan.ValidationWindowCount(128));
  ASSERT_TRUE(windows.ok());
  ASSERT_FALSE(windows->empty());
  for (const Window& w : *windows) {
    EXPECT_TRUE(plan.IsValidationBlock(w.begin / 1000));
    EXPECT_TRUE(plan.IsValidationBlock((w.begin + w.length - 1) / 1000));
  }
  EXPECT_EQ(plan.ValidationWindows(128, plan.ValidationWindowCount(128) + 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(DataPlanTest, RanksSplitAStepsWindowsInOrder) {
  const DataPlan plan = Plan(0.05);
  for (int64_t step : {0, 3, 1000}) {
    auto all = plan.TrainingWindows(1, 64, 8, step, 0, 1);
    ASSERT_TRUE(all.ok());
    std::vector<Window> joined;
    for (int rank = 0; rank < 4; ++rank) {
      auto part = plan.TrainingWindows(1, 64, 8, step, rank, 4);
      ASSERT_TRUE(part.ok());
      EXPECT_EQ(part->size(), 2u);
      joined.insert(joined.end(), part->begin(), part->end());
    }
    EXPECT_EQ(joined, *all) << "step " << step;
  }
  EXPECT_EQ(plan.TrainingWindows(1, 64, 6, 0, 0, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DataPlanTest, PureFunctionOfSeedStageAndStep) {
  const DataPlan a = Plan(0.1, 7), b = Plan(0.1, 7), other_seed = Plan(0.1, 8);
  EXPECT_EQ(*a.TrainingWindows(0, 128, 16, 5, 0, 1), *b.TrainingWindows(0, 128, 16, 5, 0, 1));
  EXPECT_NE(*a.TrainingWindows(0, 128, 16, 5, 0, 1), *a.TrainingWindows(1, 128, 16, 5, 0, 1));
  EXPECT_NE(*a.TrainingWindows(0, 128, 16, 5, 0, 1),
            *other_seed.TrainingWindows(0, 128, 16, 5, 0, 1));
}

TEST(DataPlanEdgeTest, SmallDatasets) {
  // Two blocks and a fraction > 0: exactly one block is held out.
  auto two = DataPlan::Create(2000, {.seed = 1, .validation_fraction = 0.01, .block_tokens = 1000});
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->validation_tokens(), 1000);
  // Windows longer than any run: a clear error.
  EXPECT_EQ(two->TrainingWindows(0, 1000, 1, 0, 0, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(DataPlan::Create(1, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DataPlan::Create(100, {.validation_fraction = 0.5}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qtrain::train
