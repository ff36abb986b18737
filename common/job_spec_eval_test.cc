// eval.tasks of a job spec: names, data files, needle grids, numbers, and the YAML round trip.
#include "common/job_spec_eval.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A valid spec whose eval section is `eval`.
std::string SpecWithEval(const std::string& eval) {
  return absl::StrCat(R"(
name: demo
model: {preset: qwen2-tiny}
tokenizer: tok.json
data: {manifest: shards/manifest.json, validation_fraction: 0.01}
curriculum:
  - {name: short, seq_len: 128, tokens: 4000000, micro_batch: 16}
optimizer: {lr: 6e-4}
batch: {global_tokens: 32768}
)",
                      eval, "\n");
}

std::string Problems(const std::string& eval) {
  return std::string(ParseJobSpec(SpecWithEval(eval), "job.yaml").status().message());
}

TEST(JobSpecEvalTest, AllFourTasksAreValid) {
  auto spec = ParseJobSpec(SpecWithEval(R"yaml(eval:
  batches: 2
  tasks:
    - {task: perplexity, data: held-out.jsonl, seq_len: 256, stride: 128, limit: 8}
    - {task: multiple-choice, name: hellaswag, data: hellaswag.jsonl}
    - {task: multiple-choice, name: arc, data: arc.jsonl, limit: 100}
    - {task: generation, data: gsm8k.jsonl, max_new_tokens: 64, answer_regex: "#### (\\d+)"}
    - {task: needle, lengths: [1024, 4096], depths: [0, 0.5, 1]})yaml"),
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->eval().tasks_size(), 5);
  EXPECT_EQ(spec->eval().tasks(1).name(), "hellaswag");
  EXPECT_EQ(spec->eval().tasks(3).answer_regex(), "#### (\\d+)");
  EXPECT_THAT(spec->eval().tasks(4).lengths(), ::testing::ElementsAre(1024, 4096));
  EXPECT_THAT(spec->eval().tasks(4).depths(), ::testing::ElementsAre(0.0, 0.5, 1.0));
  EXPECT_EQ(EvalTaskReportedName(spec->eval().tasks(0)), "perplexity");
  EXPECT_EQ(EvalTaskReportedName(spec->eval().tasks(2)), "arc");
}

TEST(JobSpecEvalTest, UnknownAndMissingTaskNames) {
  EXPECT_THAT(Problems("eval: {tasks: [{task: mmlu, data: x.jsonl}]}"),
              HasSubstr("job.yaml: eval.tasks[0].task: unknown task 'mmlu' (one of perplexity, "
                        "multiple-choice, generation, needle)"));
  EXPECT_THAT(Problems("eval: {tasks: [{data: x.jsonl}]}"),
              HasSubstr("eval.tasks[0].task: required: one of perplexity"));
}

TEST(JobSpecEvalTest, ReportedNamesAreUnique) {
  EXPECT_THAT(Problems("eval: {tasks: [{task: perplexity, data: a.jsonl}, "
                       "{task: perplexity, data: b.jsonl}]}"),
              HasSubstr("eval.tasks[1].task: duplicate reported name 'perplexity'"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: multiple-choice, name: x, data: a.jsonl}, "
                       "{task: generation, name: x, data: b.jsonl}]}"),
              HasSubstr("eval.tasks[1].name: duplicate reported name 'x'"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: perplexity, name: 'a b', data: a.jsonl}]}"),
              HasSubstr("eval.tasks[0].name: 'a b': use 1-63 of"));
  EXPECT_TRUE(ParseJobSpec(SpecWithEval("eval: {tasks: [{task: perplexity, data: a.jsonl}, "
                                        "{task: perplexity, name: ppl-b, data: b.jsonl}]}"),
                           "job.yaml")
                  .ok());
}

TEST(JobSpecEvalTest, DataIsRequiredExceptForNeedle) {
  for (const char* task : {"perplexity", "multiple-choice", "generation"}) {
    EXPECT_THAT(Problems(absl::StrCat("eval: {tasks: [{task: ", task, "}]}")),
                HasSubstr(absl::StrCat("eval.tasks[0].data: required for ", task)));
  }
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle, lengths: [64], depths: [0.5]}]}"),
              Not(HasSubstr("data")));
}

TEST(JobSpecEvalTest, NeedleLengthsAndDepths) {
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle}]}"),
              HasSubstr("eval.tasks[0].lengths: required for needle"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle}]}"),
              HasSubstr("eval.tasks[0].depths: required for needle"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle, lengths: [64, 0], depths: [0.5]}]}"),
              HasSubstr("eval.tasks[0].lengths[1]: must be in [1, 1099511627776] tokens, got 0"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle, lengths: [64], depths: [0, 1.5]}]}"),
              HasSubstr("eval.tasks[0].depths[1]: must be in [0, 1], got 1.5"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: needle, lengths: [64], depths: [-0.1]}]}"),
              HasSubstr("eval.tasks[0].depths[0]: must be in [0, 1], got -0.1"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: perplexity, data: a.jsonl, lengths: [64]}]}"),
              HasSubstr("eval.tasks[0].lengths: only needle takes lengths and depths"));
}

TEST(JobSpecEvalTest, NumbersAreNotNegative) {
  const std::string problems = Problems(
      "eval: {tasks: [{task: perplexity, data: a.jsonl, seq_len: -1, stride: -2, limit: -3}, "
      "{task: generation, data: g.jsonl, max_new_tokens: -4}]}");
  EXPECT_THAT(problems, HasSubstr("eval.tasks[0].seq_len: must be >= 0 (0: the stage's seq_len), "
                                  "got -1"));
  EXPECT_THAT(problems, HasSubstr("eval.tasks[0].stride: must be >= 0"));
  EXPECT_THAT(problems, HasSubstr("eval.tasks[0].limit: must be >= 0 (0: all), got -3"));
  EXPECT_THAT(problems, HasSubstr("eval.tasks[1].max_new_tokens: must be >= 0"));
  EXPECT_THAT(Problems("eval: {tasks: [{task: multiple-choice, data: a.jsonl, seq_len: 64}]}"),
              HasSubstr("eval.tasks[0].seq_len: only perplexity takes seq_len and stride"));
}

TEST(JobSpecEvalTest, EveryProblemIsReported) {
  const std::string problems =
      Problems("eval: {tasks: [{task: bogus}, {task: generation}, {task: needle}]}");
  EXPECT_THAT(problems, HasSubstr("eval.tasks[0].task"));
  EXPECT_THAT(problems, HasSubstr("eval.tasks[1].data"));
  EXPECT_THAT(problems, HasSubstr("eval.tasks[2].lengths"));
}

// Block YAML and JSON read into the same message: repeated messages, repeated doubles and
// strings with escapes survive.
TEST(JobSpecEvalTest, YamlAndJsonReadTheSame) {
  auto yaml = ParseJobSpec(SpecWithEval(R"yaml(eval:
  tasks:
    - task: generation
      name: gsm
      data: "g s.jsonl"
      answer_regex: "\"(\\d+)\""
    - task: needle
      lengths:
        - 1024
        - 32768
      depths: [0, 0.25, 0.1, 1]
      limit: 3)yaml"),
                           "job.yaml");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  auto json = ParseJobSpec(SpecWithEval(R"json(eval: {"tasks": [
    {"task": "generation", "name": "gsm", "data": "g s.jsonl", "answer_regex": "\"(\\d+)\""},
    {"task": "needle", "lengths": [1024, 32768], "depths": [0, 0.25, 0.1, 1.0], "limit": 3}]})json"),
                           "job.json");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*yaml, *json));
  EXPECT_EQ(yaml->eval().tasks(0).answer_regex(), "\"(\\d+)\"");
  EXPECT_DOUBLE_EQ(yaml->eval().tasks(1).depths(2), 0.1);
  EXPECT_EQ(yaml->eval().tasks(1).limit(), 3);
  // And the stored form (the coordinator keeps the binary message).
  v1::JobSpec again;
  ASSERT_TRUE(again.ParseFromString(yaml->SerializeAsString()));
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*yaml, again));
}

}  // namespace
}  // namespace qtrain
