#include "common/checked_math.h"

#include <cstdint>
#include <limits>

#include "gtest/gtest.h"

namespace qtrain {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

TEST(CheckedMathTest, MulReportsOverflowInsteadOfWrapping) {
  EXPECT_EQ(CheckedMul(3, 4), 12);
  EXPECT_EQ(CheckedMul(-3, 4), -12);
  EXPECT_EQ(CheckedMul(kMax, 1), kMax);
  EXPECT_EQ(CheckedMul(kMax, 2), std::nullopt);
  EXPECT_EQ(CheckedMul(kMin, -1), std::nullopt);
  // The wrap the job-spec validator used to hit: 2^31 x 2^33 = 2^64 wraps to 0.
  EXPECT_EQ(CheckedMul(int64_t{1} << 31, int64_t{1} << 33), std::nullopt);
}

TEST(CheckedMathTest, AddAndSubReportOverflow) {
  EXPECT_EQ(CheckedAdd(kMax - 1, 1), kMax);
  EXPECT_EQ(CheckedAdd(kMax, 1), std::nullopt);
  EXPECT_EQ(CheckedAdd(kMin, -1), std::nullopt);
  EXPECT_EQ(CheckedSub(kMin + 1, 1), kMin);
  EXPECT_EQ(CheckedSub(kMin, 1), std::nullopt);
}

TEST(CheckedMathTest, ProductAndSumOfSeveralTerms) {
  EXPECT_EQ(CheckedProduct({2, 3, 7}), 42);
  EXPECT_EQ(CheckedProduct({}), 1);
  EXPECT_EQ(CheckedProduct({int64_t{1} << 31, 8589934592, 1}), std::nullopt);
  EXPECT_EQ(CheckedProduct({0, kMax, kMax}), 0);
  EXPECT_EQ(CheckedSum({1, 2, 3}), 6);
  EXPECT_EQ(CheckedSum({kMax, 1, -5}), std::nullopt);  // the partial sum overflows
}

TEST(CheckedMathTest, Bytes) {
  EXPECT_EQ(CheckedBytes(10, 4), size_t{40});
  EXPECT_EQ(CheckedBytes(-1, 4), std::nullopt);
  EXPECT_EQ(CheckedBytes(kMax, 4), std::nullopt);
}

TEST(CheckedMathTest, DoubleToInt64) {
  EXPECT_EQ(CheckedDoubleToInt64(32768.0 * 4.0), 131072);
  EXPECT_EQ(CheckedDoubleToInt64(2.9), 2);
  EXPECT_EQ(CheckedDoubleToInt64(-2.1), -3);
  EXPECT_EQ(CheckedDoubleToInt64(3.6e16 * 32768), std::nullopt);
  EXPECT_EQ(CheckedDoubleToInt64(9223372036854775808.0), std::nullopt);
  EXPECT_EQ(CheckedDoubleToInt64(std::numeric_limits<double>::infinity()), std::nullopt);
  EXPECT_EQ(CheckedDoubleToInt64(std::numeric_limits<double>::quiet_NaN()), std::nullopt);
}

}  // namespace
}  // namespace qtrain
