#include "worker/train/lr_schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

TEST(LrScheduleTest, WarmupIsLinearAndStartsAboveZero) {
  const LrScheduleParams p{.lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 10, .total_steps = 110};
  EXPECT_DOUBLE_EQ(LearningRate(p, 0), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRate(p, 4), 5e-4);
  EXPECT_DOUBLE_EQ(LearningRate(p, 9), 1e-3);
}

TEST(LrScheduleTest, CosineGoesFromPeakToMinimumThroughTheMidpoint) {
  const LrScheduleParams p{.lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 10, .total_steps = 111};
  EXPECT_DOUBLE_EQ(LearningRate(p, 10), 1e-3);
  EXPECT_NEAR(LearningRate(p, 60), 0.5 * (1e-3 + 1e-4), 1e-15);
  EXPECT_DOUBLE_EQ(LearningRate(p, 110), 1e-4);
  EXPECT_DOUBLE_EQ(LearningRate(p, 500), 1e-4);
  for (int64_t s = 10; s < 110; ++s) EXPECT_GT(LearningRate(p, s), LearningRate(p, s + 1)) << s;
}

TEST(LrScheduleTest, LinearAndConstantDecay) {
  LrScheduleParams p{
      .lr = 1.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 5, .decay = DecayKind::kLinear};
  EXPECT_DOUBLE_EQ(LearningRate(p, 0), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(p, 1), 0.75);
  EXPECT_DOUBLE_EQ(LearningRate(p, 4), 0.0);
  p.decay = DecayKind::kConstant;
  EXPECT_DOUBLE_EQ(LearningRate(p, 4), 1.0);
}

TEST(LrScheduleTest, DegenerateLengths) {
  // One step after warmup: nothing to decay, it trains at the peak.
  const LrScheduleParams p{.lr = 1.0, .min_lr = 0.1, .warmup_steps = 2, .total_steps = 3};
  EXPECT_DOUBLE_EQ(LearningRate(p, 1), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(p, 2), 1.0);
  // Two steps after warmup: peak, then min_lr.
  const LrScheduleParams two{.lr = 1.0, .min_lr = 0.1, .warmup_steps = 0, .total_steps = 2};
  EXPECT_DOUBLE_EQ(LearningRate(two, 0), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(two, 1), 0.1);
}

}  // namespace
}  // namespace qtrain::train
