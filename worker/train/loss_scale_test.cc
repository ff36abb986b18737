#include "worker/train/loss_scale.h"

#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

TEST(LossScaleTest, DisabledStaysOneAndChangesNothing) {
  LossScaler scaler;
  EXPECT_FALSE(scaler.enabled());
  EXPECT_EQ(scaler.scale(), 1.0);
  EXPECT_FALSE(scaler.Backoff());
  for (int i = 0; i < 5000; ++i) EXPECT_FALSE(scaler.Grow());
  EXPECT_EQ(scaler.scale(), 1.0);
  EXPECT_TRUE(scaler.Restore(1.0, 0).ok());
  EXPECT_EQ(scaler.Restore(2.0, 0).code(), absl::StatusCode::kDataLoss);
}

TEST(LossScaleTest, HalvesOnOverflowAndDoublesAfterTheInterval) {
  LossScaler scaler({.enabled = true, .initial = 8.0, .growth_interval = 3});
  EXPECT_EQ(scaler.scale(), 8.0);
  EXPECT_FALSE(scaler.Grow());
  EXPECT_FALSE(scaler.Grow());
  EXPECT_EQ(scaler.good_steps(), 2);
  EXPECT_TRUE(scaler.Backoff());  // an overflow restarts the count
  EXPECT_EQ(scaler.scale(), 4.0);
  EXPECT_EQ(scaler.good_steps(), 0);
  EXPECT_FALSE(scaler.Grow());
  EXPECT_FALSE(scaler.Grow());
  EXPECT_TRUE(scaler.Grow());
  EXPECT_EQ(scaler.scale(), 8.0);
  EXPECT_EQ(scaler.good_steps(), 0);
  // Down to 1, never below: an overflow at 1 is the gradient's, not the scale's.
  EXPECT_TRUE(scaler.Backoff());
  EXPECT_TRUE(scaler.Backoff());
  EXPECT_TRUE(scaler.Backoff());
  EXPECT_EQ(scaler.scale(), 1.0);
  EXPECT_FALSE(scaler.Backoff());
  EXPECT_EQ(scaler.scale(), 1.0);
}

TEST(LossScaleTest, NeverGrowsPast2To24) {
  LossScaler scaler({.enabled = true, .initial = LossScaler::kMaxScale, .growth_interval = 1});
  EXPECT_FALSE(scaler.Grow());
  EXPECT_EQ(scaler.scale(), LossScaler::kMaxScale);
}

TEST(LossScaleTest, RestoresOnlyAValidState) {
  LossScaler scaler({.enabled = true, .initial = 65536.0, .growth_interval = 10});
  ASSERT_TRUE(scaler.Restore(512.0, 9).ok());
  EXPECT_EQ(scaler.scale(), 512.0);
  EXPECT_EQ(scaler.good_steps(), 9);
  for (double bad : {0.0, 0.5, 3.0, 33554432.0, -4.0}) {
    EXPECT_EQ(scaler.Restore(bad, 0).code(), absl::StatusCode::kDataLoss) << bad;
  }
  EXPECT_EQ(scaler.Restore(2.0, 10).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(scaler.Restore(2.0, -1).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(scaler.scale(), 512.0);  // unchanged by the refusals
  EXPECT_TRUE(IsLossScale(1.0));
  EXPECT_TRUE(IsLossScale(16777216.0));
  EXPECT_FALSE(IsLossScale(1.5));
}

}  // namespace
}  // namespace qtrain::train
