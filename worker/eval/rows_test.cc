#include "worker/eval/rows.h"

#include "gtest/gtest.h"

namespace qtrain::eval {
namespace {

TEST(ChoiceRows, ParsesRowsSkippingBlankLines) {
  auto rows = ParseChoiceRows(
      "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"label\": 1}\n\n"
      "{\"context\": \"\", \"choices\": [\"c\"], \"label\": 0}\r\n",
      "mc.jsonl");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].choices, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ((*rows)[0].label, 1);
  EXPECT_EQ((*rows)[1].line, 3);
}

TEST(ChoiceRows, LimitKeepsTheFirstRows) {
  auto rows = ParseChoiceRows(
      "{\"context\": \"Q\", \"choices\": [\"a\"], \"label\": 0}\nnot json\n", "mc.jsonl", 1);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 1u);
}

void ExpectError(std::string_view content, std::string_view want) {
  auto rows = ParseChoiceRows(content, "mc.jsonl");
  ASSERT_FALSE(rows.ok()) << content;
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(rows.status().message()).find(want), std::string::npos) << rows.status();
}

TEST(ChoiceRows, BadRowsNameFileAndLine) {
  ExpectError("\n{\"context\": \"Q\", \"choices\": [\"a\"], \"label\": 3}\n",
              "mc.jsonl:2: \"label\" 3 is out of range for 1 choices");
  ExpectError("{\"context\": \"Q\", \"choices\": [\"a\"], \"label\": -1}", "out of range");
  ExpectError("{\"context\": \"Q\", \"choices\": [], \"label\": 0}",
              "mc.jsonl:1: \"choices\" is empty");
  ExpectError("{\"context\": \"Q\", \"choices\": [\"a\", 2], \"label\": 0}",
              "\"choices\"[1] must be a string, got number");
  ExpectError("{\"context\": \"Q\", \"choices\": [\"a\"]}", "missing \"label\"");
  ExpectError("{\"context\": \"Q\", \"choices\": [\"a\"], \"label\": 0.5}",
              "\"label\" must be an integer");
  ExpectError("{\"choices\": [\"a\"], \"label\": 0}", "mc.jsonl:1: missing \"context\"");
  ExpectError("{\"context\": 1", "mc.jsonl:1: not valid JSON");
  ExpectError("[1]", "expected a JSON object, got array");
  ExpectError("\xff", "mc.jsonl:1: not valid UTF-8");
  ExpectError("\n  \n", "mc.jsonl: no rows");
}

TEST(GenerationRows, StopIsOptionalAndChecked) {
  auto rows = ParseGenerationRows(
      "{\"prompt\": \"p\", \"answer\": \"#### 3\"}\n"
      "{\"prompt\": \"p\", \"answer\": \"4\", \"stop\": [\"\\n\\n\"]}\n",
      "gen.jsonl");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_TRUE((*rows)[0].stop.empty());
  EXPECT_EQ((*rows)[1].stop, std::vector<std::string>{"\n\n"});
  auto bad =
      ParseGenerationRows("{\"prompt\": \"p\", \"answer\": \"4\", \"stop\": \"x\"}", "gen.jsonl");
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("gen.jsonl:1: \"stop\" must be a list"), std::string::npos);
  EXPECT_FALSE(ParseGenerationRows("{\"prompt\": \"p\"}", "g").ok());
}

TEST(TextRows, NeedAStringText) {
  EXPECT_TRUE(ParseTextRows("{\"text\": \"hi\"}", "t.jsonl").ok());
  auto bad = ParseTextRows("{\"text\": 5}", "t.jsonl");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("t.jsonl:1: \"text\" must be a string"), std::string::npos);
}

}  // namespace
}  // namespace qtrain::eval
