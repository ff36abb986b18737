#include "worker/eval/answer.h"

#include "gtest/gtest.h"

namespace qtrain::eval {
namespace {

TEST(Answer, DefaultPatternThenLastNumber) {
  auto x = AnswerExtractor::Create("");
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->Extract("so 3 + 4 = 7\n#### 1,234."), "1234");
  EXPECT_EQ(x->Extract("The answer is 12, then -3.5 apples."), "-3.5");
  EXPECT_EQ(x->Extract("no digits here"), "");
  EXPECT_EQ(x->Extract("#### 42\n#### 43"), "42");  // the first match
  EXPECT_EQ(x->Reference("Natalia sold 48/2 = 24 clips.\n#### 72"), "72");
  EXPECT_EQ(x->Reference(" 1,000 "), "1000");
  EXPECT_EQ(NormalizeAnswer(" 18. "), "18");
  EXPECT_EQ(LastNumber("a 1 b 22 c"), "22");
}

TEST(Answer, CustomPattern) {
  auto x = AnswerExtractor::Create(R"(answer: (\w+))");
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->Extract("the answer: Paris."), "Paris");
  EXPECT_EQ(x->Extract("maybe 5"), "5");  // no match: the last number
  auto whole = AnswerExtractor::Create(R"([A-D]\b)");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->Extract("I pick C here"), "C");  // no group: the whole match
}

TEST(Answer, BadRegexIsAnError) {
  auto x = AnswerExtractor::Create("(unclosed");
  ASSERT_FALSE(x.ok());
  EXPECT_EQ(x.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(x.status().message().find("answer_regex: '(unclosed'"), std::string::npos);
}

}  // namespace
}  // namespace qtrain::eval
