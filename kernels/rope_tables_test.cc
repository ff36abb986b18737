// RopeTables against transformers' numbers (docs/model-math.md#worked-numbers).
#include "kernels/rope_tables.h"

#include <gtest/gtest.h>

#include <cmath>

namespace qtrain::kernels {
namespace {

RopeConfig Qwen2Yarn(int64_t original_max_position) {
  RopeConfig config;
  config.head_dim = 64;
  config.theta = 1e6;
  config.yarn = true;
  config.factor = 4.0;
  config.original_max_position_embeddings = original_max_position;
  return config;
}

TEST(RopeTablesTest, PlainRopeIsInverseThetaPowers) {
  RopeConfig config;
  config.head_dim = 64;
  config.theta = 1e6;
  RopeTables tables;
  ASSERT_TRUE(ComputeRopeTables(config, &tables).ok());
  ASSERT_EQ(tables.inv_freq.size(), 32u);
  EXPECT_EQ(tables.attention_factor, 1.0f);
  EXPECT_EQ(tables.inv_freq[0], 1.0f);
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR(tables.inv_freq[i], std::pow(1e6, -2.0 * i / 64),
                2e-7 * std::pow(1e6, -2.0 * i / 64))
        << i;
  }
}

TEST(RopeTablesTest, YarnWorkedNumbers) {
  RopeTables plain, yarn;
  RopeConfig config = Qwen2Yarn(32768);
  ASSERT_TRUE(ComputeRopeTables(config, &yarn).ok());
  config.yarn = false;
  ASSERT_TRUE(ComputeRopeTables(config, &plain).ok());
  EXPECT_EQ(yarn.low, 11.0);
  EXPECT_EQ(yarn.high, 20.0);
  EXPECT_NEAR(yarn.attention_factor, 1.138629f, 1e-6);
  EXPECT_NEAR(yarn.attention_factor * yarn.attention_factor, 1.296477f, 1e-6);
  for (int i = 0; i <= 11; ++i) EXPECT_EQ(yarn.inv_freq[i], plain.inv_freq[i]) << i;
  for (int i = 20; i < 32; ++i) {
    EXPECT_NEAR(yarn.inv_freq[i] / plain.inv_freq[i], 0.25, 1e-6) << i;
  }
  // Between low and high the multiplier ramps linearly in the index: 1 - (i-11)/9 * 3/4.
  for (int i = 12; i < 20; ++i) {
    const double ramp = (i - 11) / 9.0;
    EXPECT_NEAR(yarn.inv_freq[i] / plain.inv_freq[i], (1 - ramp) + ramp / 4, 1e-6) << i;
  }
  EXPECT_NEAR(yarn.inv_freq[12] / plain.inv_freq[12], 0.917, 1e-3);
  EXPECT_NEAR(yarn.inv_freq[13] / plain.inv_freq[13], 0.833, 1e-3);
}

TEST(RopeTablesTest, YarnWithTheBaseConfigContextShiftsTheRamp) {
  RopeTables yarn;
  ASSERT_TRUE(ComputeRopeTables(Qwen2Yarn(131072), &yarn).ok());
  EXPECT_EQ(yarn.low, 15.0);
  EXPECT_EQ(yarn.high, 24.0);
}

TEST(RopeTablesTest, AttentionFactorOverrides) {
  RopeConfig config = Qwen2Yarn(32768);
  config.attention_factor = 1.5;
  RopeTables tables;
  ASSERT_TRUE(ComputeRopeTables(config, &tables).ok());
  EXPECT_EQ(tables.attention_factor, 1.5f);
  config.attention_factor.reset();
  config.mscale = 1.0;
  config.mscale_all_dim = 0.5;
  ASSERT_TRUE(ComputeRopeTables(config, &tables).ok());
  const double ln4 = std::log(4.0);
  EXPECT_NEAR(tables.attention_factor, (0.1 * ln4 + 1) / (0.05 * ln4 + 1), 1e-6);
  config.mscale.reset();
  config.factor = 1.0;  // no scaling: factor 1
  ASSERT_TRUE(ComputeRopeTables(config, &tables).ok());
  EXPECT_EQ(tables.attention_factor, 1.0f);
}

TEST(RopeTablesTest, RejectsBadConfigs) {
  RopeTables tables;
  RopeConfig config;
  config.head_dim = 63;
  EXPECT_FALSE(ComputeRopeTables(config, &tables).ok());
  config = Qwen2Yarn(0);
  EXPECT_FALSE(ComputeRopeTables(config, &tables).ok());
  config = Qwen2Yarn(32768);
  config.factor = 0.0;
  EXPECT_FALSE(ComputeRopeTables(config, &tables).ok());
  EXPECT_FALSE(ComputeRopeTables(Qwen2Yarn(32768), nullptr).ok());
}

}  // namespace
}  // namespace qtrain::kernels
