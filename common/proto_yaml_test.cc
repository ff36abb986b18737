#include "common/proto_yaml.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

absl::Status Parse(const std::string& text, v1::JobSpec* spec) {
  return ParseYamlToMessage(text, "spec.yaml", spec);
}

void ExpectError(const std::string& text, const std::string& field_path,
                 const std::string& problem) {
  v1::JobSpec spec;
  const absl::Status status = Parse(text, &spec);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << text;
  EXPECT_THAT(std::string(status.message()), HasSubstr(field_path + ": ")) << text;
  EXPECT_THAT(std::string(status.message()), HasSubstr(problem)) << text;
}

TEST(ProtoYamlTest, FillsNestedMessagesRepeatedFieldsEnumsAndMaps) {
  v1::JobSpec spec;
  ASSERT_TRUE(Parse(R"(
name: demo
seed: 18446744073709551615
model: {preset: qwen2-tiny}
curriculum:
  - {name: a, seq_len: 128, tokens: 4e6, micro_batch: 16}
  - name: b
    seq_len: 512
    rope_theta: 1000000
optimizer: {lr: 6e-4, weight_decay: 0}
precision: BF16
world: {device: Cuda}
labels: {team: research, "x y": "1"}
)",
                    &spec)
                  .ok());
  EXPECT_EQ(spec.name(), "demo");
  EXPECT_EQ(spec.seed(), 18446744073709551615ull);
  EXPECT_EQ(spec.model().preset(), "qwen2-tiny");
  ASSERT_EQ(spec.curriculum_size(), 2);
  EXPECT_EQ(spec.curriculum(0).tokens(), 4000000);
  EXPECT_EQ(spec.curriculum(1).rope_theta(), 1e6);
  EXPECT_DOUBLE_EQ(spec.optimizer().lr(), 6e-4);
  EXPECT_TRUE(spec.optimizer().has_weight_decay());  // explicit 0 is kept apart from unset
  EXPECT_FALSE(spec.optimizer().has_beta1());
  EXPECT_EQ(spec.precision(), v1::PRECISION_BF16);
  EXPECT_EQ(spec.world().device(), v1::DEVICE_KIND_CUDA);
  EXPECT_EQ(spec.labels().at("x y"), "1");
}

TEST(ProtoYamlTest, JsonIsAccepted) {
  v1::JobSpec spec;
  const absl::Status status = Parse(
      "{\n\t\"name\": \"j\",\n\t\"curriculum\": [{\"seq_len\": 64}],\n\t\"eval\": null}", &spec);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(spec.curriculum(0).seq_len(), 64);
  EXPECT_FALSE(spec.has_eval());
}

TEST(ProtoYamlTest, UnknownFieldsNameThePathAndTheKnownFields) {
  ExpectError("optimizer: {lrr: 1}", "optimizer.lrr", "unknown field (known: lr, min_lr");
  ExpectError("curriculum: [{name: a}, {nam: b}]", "curriculum[1].nam", "unknown field");
  ExpectError("bogus: 1", "bogus", "unknown field");
}

TEST(ProtoYamlTest, WrongTypes) {
  ExpectError("seed: abc", "seed", "expected an integer");
  ExpectError("seed: 1.5", "seed", "expected an integer");
  ExpectError(R"({"seed": "12"})", "seed", "expected an integer, got the string");
  ExpectError("optimizer: {lr: fast}", "optimizer.lr", "expected a finite number");
  ExpectError("optimizer: {lr: .nan}", "optimizer.lr", "finite");
  ExpectError("optimizer: {lr: '0.1'}", "optimizer.lr", "got the string");
  ExpectError("curriculum: {name: a}", "curriculum", "expected a sequence");
  ExpectError("model: qwen2", "model", "expected a mapping");
  ExpectError("name: [a, b]", "name", "expected a single value");
  ExpectError("precision: fp8", "precision", "unknown value \"fp8\" (one of PRECISION_FP32");
  ExpectError("labels: {a: [1]}", "labels", "mapping of strings");
  ExpectError("- 1\n- 2", "(top level)", "expected a mapping");
}

TEST(ProtoYamlTest, OutOfRangeIntegers) {
  ExpectError("seed: -1", "seed", "value -1 is out of range [0, 18446744073709551615]");
  ExpectError("seed: 18446744073709551616", "seed", "out of range");
  ExpectError("curriculum: [{seq_len: 9223372036854775808}]", "curriculum[0].seq_len",
              "out of range");
  ExpectError("curriculum: [{seq_len: 1e400}]", "curriculum[0].seq_len", "out of range");
  ExpectError("curriculum: [{seq_len: 1e999999}]", "curriculum[0].seq_len", "out of range");
}

TEST(ProtoYamlTest, DuplicateKeysAndOneofConflicts) {
  ExpectError("name: a\nname: b", "name", "duplicate key");
  ExpectError("model: {preset: qwen2-tiny, init_from: /ckpt}", "model.init_from",
              "set only one of source");
}

TEST(ProtoYamlTest, ErrorsCarryLineAndColumn) {
  v1::JobSpec spec;
  const absl::Status status = Parse("name: x\noptimizer:\n  lr: oops\n", &spec);
  EXPECT_THAT(std::string(status.message()), HasSubstr("spec.yaml:3:7: optimizer.lr"));
}

TEST(ProtoYamlTest, SyntaxErrorsAndEmptyDocuments) {
  v1::JobSpec spec;
  EXPECT_THAT(std::string(Parse("name: [unclosed", &spec).message()),
              HasSubstr("not valid YAML or JSON"));
  EXPECT_THAT(std::string(Parse("", &spec).message()), HasSubstr("empty"));
  EXPECT_THAT(std::string(Parse(std::string(100000, '['), &spec).message()),
              HasSubstr("spec.yaml"));
}

TEST(ProtoYamlTest, OnlyOneDocument) {
  ExpectError("name: a\n---\nname: b\n", "", "a second YAML document starts here");
  ExpectError("name: a\n---\n", "", "a spec must be a single document");
  v1::JobSpec spec;
  EXPECT_TRUE(Parse("---\nname: a\n...\n", &spec).ok());
  // yaml-cpp reads an endless run of documents after this malformed flow mapping; counting them
  // all (YAML::LoadAll) grew without bound. It is refused at once.
  const absl::Status status = Parse(
      "{\n 0000, \"micro_batch\": 4, \"rope_theta\": 10000},\n    {\"name\": \"32k\"}\n  ],\n"
      "  \"batch\": {\"global_tokens\": 2097152}\n}\n",
      &spec);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("a spec must be a single document"));
}

TEST(ProtoYamlTest, IntegersArePlainDecimal) {
  ExpectError("seed: !!str 7", "seed", "expected an integer, got \"7\" tagged !!str");
  ExpectError("seed: !!int 7", "seed", "tagged !!int");
  ExpectError("seed: 0x10", "seed", "expected an integer, got \"0x10\" (write integers in decimal");
  ExpectError("seed: 0o17", "seed", "in decimal");
  ExpectError("seed: 010", "seed", "without leading zeros");
  ExpectError("seed: 1_000", "seed", "expected an integer");
  ExpectError("seed: 0x1p4", "seed", "expected an integer");
  ExpectError("batch: {global_tokens: 1e-99999}", "batch.global_tokens", "expected an integer");
  v1::JobSpec spec;
  ASSERT_TRUE(Parse("seed: +7\nbatch: {global_tokens: 3.2768e4}", &spec).ok());
  EXPECT_EQ(spec.seed(), 7u);
  EXPECT_EQ(spec.batch().global_tokens(), 32768);
}

TEST(ProtoYamlTest, FloatsThatDoNotFitSayWhy) {
  ExpectError("optimizer: {lr: 1e999}", "optimizer.lr",
              "value 1e999 is out of range: the largest double is 1.79769e+308");
  ExpectError("optimizer: {lr: 1e-310}", "optimizer.lr",
              "value 1e-310 is too small: it is subnormal (the smallest normal double is");
  ExpectError("optimizer: {lr: 1e-400}", "optimizer.lr", "too small: it is rounded to 0");
  ExpectError("optimizer: {lr: 0x1p-3}", "optimizer.lr", "expected a finite number");
  ExpectError("optimizer: {lr: infinity}", "optimizer.lr", "expected a finite number");
  ExpectError("optimizer: {lr: NaN}", "optimizer.lr", "expected a finite number");
  ExpectError("optimizer: {lr: !!float 1}", "optimizer.lr", "tagged !!float");
  v1::JobSpec spec;
  ASSERT_TRUE(Parse("optimizer: {lr: .5, min_lr: 0, eps: 2.3e-308}", &spec).ok());
  EXPECT_EQ(spec.optimizer().lr(), 0.5);
}

TEST(ProtoYamlTest, TextFieldsRefuseValuesYamlReadsAsOtherTypes) {
  ExpectError("labels: {a: 1}", "labels.a", "expected a string, got the number 1 (quote it");
  ExpectError("labels: {a: true}", "labels.a", "got the bool true");
  ExpectError("labels: {a: 1.5e3}", "labels.a", "got the number");
  ExpectError("labels: {7: x}", "labels.7", "got the number 7");
  ExpectError("labels: {a: 010}", "labels.a", "got the number 010");
  ExpectError("labels: {a: 0x1F}", "labels.a", "got the number 0x1F");
  ExpectError("labels: {a: .inf}", "labels.a", "got the number .inf");
  ExpectError("labels: {a: ~}", "labels", "expected a mapping of strings");
  ExpectError("name: 123", "name", "expected a string, got the number 123");
  ExpectError("name: yes", "name", "got the bool yes");
  ExpectError("name: !custom x", "name", "tagged !custom");
  ExpectError(R"({"labels": {"a": 1}})", "labels.a", "expected a string");
  v1::JobSpec spec;
  ASSERT_TRUE(Parse("name: !!str 123\nlabels: {a: '1', b: \"true\", c: v1.2, d: 1x}", &spec).ok());
  EXPECT_EQ(spec.name(), "123");
  EXPECT_EQ(spec.labels().at("a"), "1");
  EXPECT_EQ(spec.labels().at("c"), "v1.2");
}

TEST(ProtoYamlTest, NestingDepthIsBounded) {
  v1::JobSpec spec;
  for (const size_t depth : {size_t{1999}, size_t{2500}, size_t{100000}}) {
    const absl::Status status = Parse("labels: " + std::string(depth, '['), &spec);
    EXPECT_THAT(std::string(status.message()), HasSubstr("nested deeper than 32 levels"))
        << depth << ": " << status;
  }
  std::string balanced = "name: a\nlabels: ";
  for (int i = 0; i < 40; ++i) balanced += "[";
  for (int i = 0; i < 40; ++i) balanced += "]";
  EXPECT_THAT(std::string(Parse(balanced, &spec).message()),
              HasSubstr("nested deeper than 32 levels"));
  EXPECT_THAT(std::string(Parse("x: " + std::string(40, '-'), &spec).message()),
              Not(HasSubstr("nested deeper")));  // a plain scalar, not nesting
  EXPECT_THAT(std::string(Parse(
                              "labels:\n" + std::string("  - ") +
                                  [] {
                                    std::string s;
                                    for (int i = 0; i < 40; ++i) s += "- ";
                                    return s + "x";
                                  }(),
                              &spec)
                              .message()),
              HasSubstr("nested deeper than 32 levels"));
}

TEST(ProtoYamlTest, AliasesCannotMultiplyWithoutBound) {
  std::string text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n";
  for (char c = 'b'; c <= 'h'; ++c) {
    text += absl::StrCat(std::string(1, c), ": &", std::string(1, c), " [");
    for (int i = 0; i < 10; ++i) text += absl::StrCat(i ? ", " : "", "*", std::string(1, c - 1));
    text += "]\n";
  }
  v1::JobSpec spec;
  EXPECT_THAT(std::string(Parse(text, &spec).message()),
              HasSubstr("more than 1048576 values (counting every use of an alias)"));
}

TEST(ProtoYamlTest, OnlyUtf8) {
  v1::JobSpec spec;
  const std::string utf16le("\xFF\xFEn\0a\0m\0e\0", 10);
  EXPECT_THAT(std::string(Parse(utf16le, &spec).message()),
              HasSubstr("spec.yaml: the file is UTF-16 (little-endian, with a byte-order mark); "
                        "a spec must be UTF-8"));
  EXPECT_THAT(std::string(Parse(std::string("\xFE\xFF\0n", 4), &spec).message()),
              HasSubstr("UTF-16 (big-endian"));
  EXPECT_THAT(std::string(Parse(std::string("\xFF\xFE\0\0n\0\0\0", 8), &spec).message()),
              HasSubstr("UTF-32 (little-endian"));
  EXPECT_THAT(std::string(Parse(std::string("\0\0\xFE\xFF\0\0\0n", 8), &spec).message()),
              HasSubstr("UTF-32 (big-endian"));
  EXPECT_THAT(std::string(Parse(std::string("n\0a\0", 4), &spec).message()),
              HasSubstr("spec.yaml:1:2: contains a NUL byte"));
  EXPECT_TRUE(Parse("\xEF\xBB\xBFname: a\n", &spec).ok());  // UTF-8 with a byte-order mark
}

}  // namespace
}  // namespace qtrain
