#include "worker/comm/tree_sum.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/element_math.h"

namespace qtrain::comm {
namespace {

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

std::vector<float> RandomValues(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1e3f, 1e3f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
  return v;
}

TEST(TreeSumTest, OrderIsTheBinaryCounter) {
  const std::vector<float> v = {1e8f, 1.0f, -1e8f, 1.0f, 3.0f};
  // ((v0 + v1) + (v2 + v3)) + v4
  const float expected = ((v[0] + v[1]) + (v[2] + v[3])) + v[4];
  EXPECT_TRUE(SameBits(TreeSumOf<float>(v), expected));
  const std::vector<float> six = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(TreeSumOf<float>(six), ((1.0f + 2.0f) + (3.0f + 4.0f)) + (5.0f + 6.0f));
  EXPECT_EQ(TreeSumOf<float>(std::span<const float>()), 0.0f);
}

// The property the worker-count invariance rests on: M = W x 2^j leaves summed at once equal
// W subtree sums of 2^j leaves each, summed in rank order.
TEST(TreeSumTest, SubtreesOfAPowerOfTwoComposeForAnyRankCount) {
  for (int w : {1, 2, 3, 4, 5, 6, 8, 12}) {
    for (int j : {0, 1, 2, 3}) {
      const int m = w << j;
      const std::vector<float> leaves = RandomValues(static_cast<size_t>(m), 17u * w + j);
      std::vector<float> partials;
      for (int r = 0; r < w; ++r) {
        partials.push_back(TreeSumOf<float>(std::span(leaves).subspan(r << j, 1 << j)));
      }
      EXPECT_TRUE(SameBits(TreeSumOf<float>(leaves), TreeSumOf<float>(partials)))
          << "W " << w << ", 2^" << j;
    }
  }
}

TEST(TreeSumTest, AccumulatorMatchesTheScalarSumAndBoundsItsBuffers) {
  constexpr int64_t kSize = 37;
  for (int count : {1, 2, 3, 7, 8, 13, 16}) {
    std::vector<std::vector<float>> leaves;
    for (int k = 0; k < count; ++k) leaves.push_back(RandomValues(kSize, 100u + k));
    TreeAccumulator<float> acc(kSize);
    int64_t most_buffers = 0;
    for (const auto& leaf : leaves) {
      ASSERT_TRUE(acc.Add(leaf).ok());
      most_buffers = std::max(most_buffers, acc.buffers_held());
    }
    EXPECT_LE(most_buffers, static_cast<int64_t>(std::bit_width(static_cast<unsigned>(count))) + 1);
    std::vector<float> out(kSize);
    ASSERT_TRUE(acc.Finish(out).ok());
    std::vector<std::span<const float>> spans(leaves.begin(), leaves.end());
    std::vector<float> expected(kSize);
    TreeSumInto<float>(spans, expected);
    for (int64_t i = 0; i < kSize; ++i) {
      ASSERT_TRUE(SameBits(out[i], expected[i])) << "count " << count << ", element " << i;
    }
    EXPECT_EQ(acc.count(), 0);
  }
}

TEST(TreeSumTest, AccumulatorRefusesLeavesOfAnotherSize) {
  TreeAccumulator<double> acc(4);
  std::vector<double> wrong(5);
  EXPECT_EQ(acc.Add(wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acc.Finish(wrong).code(), absl::StatusCode::kInvalidArgument);
}

// The NCCL communicator's TreeSumRows kernel sums with math::TreeSumStrided: it must be
// TreeSumOf bit for bit, for every count (the rank counts of a group) and row stride.
TEST(TreeSumTest, StridedKernelMathIsTreeSumOf) {
  for (int count : {1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 64, 100}) {
    for (int64_t stride : {1, 3, 1024}) {
      const std::vector<float> values =
          RandomValues(static_cast<size_t>(count * stride), 1000u + count);
      std::vector<float> column(static_cast<size_t>(count));
      for (int k = 0; k < count; ++k) column[k] = values[static_cast<size_t>(k * stride)];
      EXPECT_TRUE(SameBits(kernels::math::TreeSumStrided(values.data(), stride, count),
                           TreeSumOf<float>(column)))
          << count << " rows, stride " << stride;
    }
  }
  const std::vector<double> doubles = {1e300, 1.0, -1e300, 2.0, 0.5};
  EXPECT_EQ(kernels::math::TreeSumStrided(doubles.data(), 1, 5), TreeSumOf<double>(doubles));
  EXPECT_EQ(kernels::math::TreeSumStrided(doubles.data(), 1, 0), 0.0);
}

}  // namespace
}  // namespace qtrain::comm
