#include "common/logging.h"

#include "gtest/gtest.h"

namespace qtrain {
namespace {

TEST(LoggingTest, ParsesLevels) {
  LogLevel level = LogLevel::kInfo;
  EXPECT_TRUE(ParseLogLevel("debug", &level));
  EXPECT_EQ(level, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("WARNING", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  EXPECT_FALSE(ParseLogLevel("loud", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
}

TEST(LoggingTest, LinesBelowTheThresholdAreNotEvaluated) {
  SetMinLogLevel(LogLevel::kWarning);
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  QTRAIN_LOG(INFO) << count();
  EXPECT_EQ(evaluated, 0);
  testing::internal::CaptureStderr();
  QTRAIN_LOG(ERROR) << "value " << count();
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(evaluated, 1);
  EXPECT_EQ(out.front(), 'E');
  EXPECT_NE(out.find("logging_test.cc:"), std::string::npos);
  EXPECT_NE(out.find("] value 1\n"), std::string::npos);
  SetMinLogLevel(LogLevel::kInfo);
}

TEST(LoggingDeathTest, CheckFailureAborts) {
  EXPECT_DEATH(QTRAIN_CHECK(1 + 1 == 3) << "math is broken", "Check failed: 1 \\+ 1 == 3");
}

}  // namespace
}  // namespace qtrain
