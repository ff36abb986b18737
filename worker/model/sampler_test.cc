#include "worker/model/sampler.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace qtrain::model {
namespace {

TEST(SamplerTest, GreedyTakesTheFirstMaximum) {
  Sampler sampler({.temperature = 0});
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(sampler.Next(logits), 1);
}

TEST(SamplerTest, TinyTopPKeepsOnlyTheBestToken) {
  Sampler sampler({.temperature = 1.0, .top_p = 1e-6, .seed = 3});
  const std::vector<float> logits = {0.1f, 0.3f, 0.2f};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sampler.Next(logits), 1);
}

TEST(SamplerTest, SamplingFollowsTheDistributionAndTheSeed) {
  const std::vector<float> logits = {0.0f, std::log(3.0f), -50.0f};  // p = 1/4, 3/4, ~0
  Sampler a({.temperature = 1.0, .top_p = 1.0, .seed = 42});
  Sampler b({.temperature = 1.0, .top_p = 1.0, .seed = 42});
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 4000; ++i) {
    const int64_t x = a.Next(logits);
    ASSERT_EQ(x, b.Next(logits));
    ++counts[x];
  }
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[1] / 4000.0, 0.75, 0.05);
}

TEST(SamplerTest, ValidatesOptions) {
  EXPECT_FALSE(ValidateSamplerOptions({.temperature = -1}).ok());
  EXPECT_FALSE(ValidateSamplerOptions({.top_p = 0}).ok());
  EXPECT_FALSE(ValidateSamplerOptions({.top_p = 1.5}).ok());
  EXPECT_TRUE(ValidateSamplerOptions({.temperature = 0.7, .top_p = 0.9}).ok());
}

}  // namespace
}  // namespace qtrain::model
