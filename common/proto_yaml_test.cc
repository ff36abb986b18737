#include "common/proto_yaml.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;

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
  ExpectError("curriculum: [{seq_len: 1e999999}]", "curriculum[0].seq_len", "expected an integer");
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

}  // namespace
}  // namespace qtrain
