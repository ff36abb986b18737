#include "worker/train/device_accumulator.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/comm/tree_sum.h"
#include "worker/model/opaque_backend_test_util.h"

namespace qtrain::train {
namespace {

TEST(DeviceTreeAccumulatorTest, EqualsTheHostTreeSumBitForBit) {
  model::OpaqueMemoryBackend backend;
  constexpr int64_t kSize = 1003;
  const size_t bytes = kSize * sizeof(float);
  float* leaf = static_cast<float*>(backend.Alloc(bytes));
  float* out = static_cast<float*>(backend.Alloc(bytes));
  ASSERT_NE(leaf, nullptr);
  ASSERT_NE(out, nullptr);
  DeviceTreeAccumulator device(backend, kSize);
  comm::TreeAccumulator<float> host(kSize);
  std::mt19937 rng(7);
  // Values of very different sizes, so that another order of additions shows in the bits.
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  // Each count twice: the buffers are reused after Finish.
  for (int64_t count : {0, 1, 2, 3, 5, 7, 8, 9, 13, 16, 0, 5}) {
    SCOPED_TRACE(count);
    std::vector<float> values(kSize);
    for (int64_t k = 0; k < count; ++k) {
      for (float& v : values) v = std::ldexp(mantissa(rng), exponent(rng));
      ASSERT_TRUE(backend.CopyHostToBackend(leaf, values.data(), bytes).ok());
      ASSERT_TRUE(device.Add(leaf).ok());
      ASSERT_TRUE(host.Add(values).ok());
      // The leaf's buffer is free again at once (the model's gradient is the next leaf).
      ASSERT_TRUE(backend.Fill(leaf, kSize, NAN).ok());
    }
    EXPECT_EQ(device.count(), count);
    std::vector<float> want(kSize), got(kSize, -1.0f);
    ASSERT_TRUE(host.Finish(want).ok());
    ASSERT_TRUE(device.Finish(out).ok());
    ASSERT_TRUE(backend.CopyBackendToHost(got.data(), out, bytes).ok());
    for (int64_t i = 0; i < kSize; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "element " << i;
    }
    EXPECT_EQ(device.count(), 0);
    EXPECT_LE(device.buffers_held(), 5);  // floor(log2(16)) + 1
  }
  // Finishing into the buffer the leaves came from.
  const std::vector<float> ones(kSize, 1.0f);
  ASSERT_TRUE(backend.CopyHostToBackend(leaf, ones.data(), bytes).ok());
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(device.Add(leaf).ok());
  ASSERT_TRUE(device.Finish(leaf).ok());
  std::vector<float> three(kSize);
  ASSERT_TRUE(backend.CopyBackendToHost(three.data(), leaf, bytes).ok());
  EXPECT_EQ(three, std::vector<float>(kSize, 3.0f));
  EXPECT_FALSE(device.Add(nullptr).ok());
  backend.Free(leaf);
  backend.Free(out);
}

}  // namespace
}  // namespace qtrain::train
