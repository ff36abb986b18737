#include "cli/output.h"

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace qtrain::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

v1::Job SampleJob() {
  v1::Job job;
  job.set_name("jobs/demo-1");
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_run_directory("/runs/demo-1");
  job.set_restarts(1);
  job.mutable_create_time()->set_seconds(1000);
  job.mutable_spec()->set_name("demo");
  job.mutable_spec()->mutable_batch()->set_global_tokens(100);
  auto* s0 = job.mutable_spec()->add_curriculum();
  s0->set_name("short");
  s0->set_tokens(1000);
  auto* s1 = job.mutable_spec()->add_curriculum();
  s1->set_name("long");
  s1->set_tokens(500);
  job.mutable_progress()->set_stage(1);
  job.mutable_progress()->set_step(12);
  job.mutable_progress()->set_loss(2.345678);
  return job;
}

TEST(OutputFormatTest, ParsesTheThreeNamesOnly) {
  EXPECT_EQ(ParseOutputFormat("table").value(), OutputFormat::kTable);
  EXPECT_EQ(ParseOutputFormat("json").value(), OutputFormat::kJson);
  EXPECT_EQ(ParseOutputFormat("yaml").value(), OutputFormat::kYaml);
  absl::StatusOr<OutputFormat> bad = ParseOutputFormat("xml");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("'xml'"));
}

TEST(MessageToJsonTest, ProtoFieldNamesEnumNamesAndDefaults) {
  v1::Job job;
  job.set_name("jobs/a-1");
  job.set_run_directory("/r/a-1");
  const std::string json = MessageToJson(job, /*pretty=*/true).value();
  const nlohmann::json parsed = nlohmann::json::parse(json);
  EXPECT_EQ(parsed["name"], "jobs/a-1");
  EXPECT_EQ(parsed["run_directory"], "/r/a-1");
  EXPECT_EQ(parsed["state"], "JOB_STATE_UNSPECIFIED");  // printed although default
  EXPECT_EQ(parsed["state_message"], "");
  EXPECT_EQ(parsed["restarts"], "0");  // int64 as a string, as protobuf JSON does
  EXPECT_FALSE(parsed.contains("runDirectory"));
}

TEST(MessageToJsonTest, OneLineEndsWithNewline) {
  v1::JobEvent event;
  event.set_job("jobs/a-1");
  event.set_sequence(7);
  event.mutable_state_changed()->set_to(v1::JOB_STATE_SUCCEEDED);
  const std::string json = MessageToJson(event, /*pretty=*/false).value();
  EXPECT_EQ(json.find('\n'), json.size() - 1);
  const nlohmann::json parsed = nlohmann::json::parse(json);
  EXPECT_EQ(parsed["state_changed"]["to"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(parsed["sequence"], "7");
}

TEST(JsonToYamlTest, SameObjectInTheSameKeyOrder) {
  const std::string json = MessageToJson(SampleJob(), /*pretty=*/false).value();
  const std::string yaml = JsonToYaml(json).value();
  YAML::Node node = YAML::Load(yaml);
  ASSERT_TRUE(node.IsMap()) << yaml;
  EXPECT_EQ(node["name"].as<std::string>(), "jobs/demo-1");
  EXPECT_EQ(node["state"].as<std::string>(), "JOB_STATE_RUNNING");
  EXPECT_EQ(node["run_directory"].as<std::string>(), "/runs/demo-1");
  EXPECT_EQ(node["spec"]["curriculum"][1]["name"].as<std::string>(), "long");
  // The keys keep the JSON's (field number) order.
  std::vector<std::string> keys;
  for (const auto& kv : node) keys.push_back(kv.first.as<std::string>());
  ASSERT_GE(keys.size(), 3u);
  EXPECT_EQ(keys[0], "name");
  EXPECT_EQ(keys[1], "spec");
  EXPECT_EQ(keys[2], "state");
}

TEST(JsonToYamlTest, QuotesStringsYamlWouldReadAsOtherTypes) {
  const std::string yaml =
      JsonToYaml(R"({"a":"true","b":"12","c":"","d":"null","e":"plain","f":3,"g":false,)"
                 R"("h":[],"i":{},"j":"two\nlines","k":1.5,"l":"end\n"})")
          .value();
  YAML::Node node = YAML::Load(yaml);
  EXPECT_EQ(node["a"].Tag(), "!");  // quoted: a string, not a bool
  EXPECT_EQ(node["a"].as<std::string>(), "true");
  EXPECT_EQ(node["b"].Tag(), "!");
  EXPECT_EQ(node["c"].as<std::string>(), "");
  EXPECT_EQ(node["d"].Tag(), "!");
  EXPECT_EQ(node["e"].Tag(), "?");  // plain
  EXPECT_EQ(node["f"].as<int>(), 3);
  EXPECT_FALSE(node["g"].as<bool>());
  EXPECT_TRUE(node["h"].IsSequence());
  EXPECT_EQ(node["h"].size(), 0u);
  EXPECT_TRUE(node["i"].IsMap());
  EXPECT_EQ(node["j"].as<std::string>(), "two\nlines");
  EXPECT_DOUBLE_EQ(node["k"].as<double>(), 1.5);
  EXPECT_EQ(node["l"].as<std::string>(), "end\n");
}

TEST(JsonToYamlTest, RefusesNonJson) { EXPECT_FALSE(JsonToYaml("{nope").ok()); }

TEST(JobStateTest, ParsesEverySpelling) {
  EXPECT_EQ(ParseJobState("RUNNING").value(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(ParseJobState("running").value(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(ParseJobState("JOB_STATE_RUNNING").value(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(ParseJobState("cancelled").value(), v1::JOB_STATE_CANCELLED);
  absl::StatusOr<v1::JobState> bad = ParseJobState("sleeping");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("'sleeping'"));
  EXPECT_THAT(bad.status().message(), HasSubstr("QUEUED"));
  EXPECT_FALSE(ParseJobState("unspecified").ok());
  EXPECT_FALSE(ParseJobState("").ok());
}

TEST(JobStateTest, NamesAndExitCodes) {
  EXPECT_EQ(JobStateName(v1::JOB_STATE_RUNNING), "RUNNING");
  EXPECT_EQ(CheckpointStateName(v1::CHECKPOINT_STATE_COMMITTED), "COMMITTED");
  EXPECT_EQ(WorkerStateName(v1::WORKER_STATE_LOST), "LOST");
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_FAILED), 1);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_CANCELLED), 2);
  EXPECT_EQ(ExitCodeForState(v1::JOB_STATE_CANCELLING), -1);
  EXPECT_FALSE(IsFinalState(v1::JOB_STATE_RUNNING));
}

TEST(FormatDurationTest, Units) {
  EXPECT_EQ(HumanDuration(absl::Seconds(-3)), "0s");
  EXPECT_EQ(HumanDuration(absl::Seconds(42)), "42s");
  EXPECT_EQ(HumanDuration(absl::Seconds(303)), "5m03s");
  EXPECT_EQ(HumanDuration(absl::Seconds(3 * 3600 + 7 * 60 + 5)), "3h07m");
  EXPECT_EQ(HumanDuration(absl::Hours(53)), "2d05h");
  google::protobuf::Timestamp unset;
  EXPECT_EQ(FormatAge(unset, absl::Now()), "-");
  google::protobuf::Timestamp t;
  t.set_seconds(100);
  EXPECT_EQ(FormatAge(t, absl::FromUnixSeconds(190)), "1m30s");
}

TEST(RenderTableTest, AlignsColumnsWithoutTrailingSpaces) {
  const std::string table = RenderTable({{"A", "BB", "C"}, {"long-value", "x", ""}});
  EXPECT_EQ(table, "A            BB   C\nlong-value   x\n");
}

TEST(JobsTableTest, ColumnsAndValues) {
  google::protobuf::RepeatedPtrField<v1::Job> jobs;
  *jobs.Add() = SampleJob();
  v1::Job queued;
  queued.set_name("jobs/q-2");
  queued.set_state(v1::JOB_STATE_QUEUED);
  *jobs.Add() = queued;
  const std::string table = JobsTable(jobs, absl::FromUnixSeconds(1065));
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << table;
  std::vector<std::string> header = absl::StrSplit(lines[0], ' ', absl::SkipEmpty());
  EXPECT_THAT(header, ::testing::ElementsAre("NAME", "STATE", "STAGE", "STEP/TOTAL", "LOSS",
                                             "RESTARTS", "AGE"));
  std::vector<std::string> row = absl::StrSplit(lines[1], ' ', absl::SkipEmpty());
  // Total steps come from the spec when the job has not reported them: 10 + 5.
  EXPECT_THAT(row, ::testing::ElementsAre("jobs/demo-1", "RUNNING", "long", "12/15", "2.3457", "1",
                                          "1m05s"));
  std::vector<std::string> row2 = absl::StrSplit(lines[2], ' ', absl::SkipEmpty());
  EXPECT_THAT(row2, ::testing::ElementsAre("jobs/q-2", "QUEUED", "-", "0/0", "-", "0", "-"));
  // Columns line up: STATE starts at the same offset in every line.
  EXPECT_EQ(lines[0].find("STATE"), lines[1].find("RUNNING"));
  EXPECT_EQ(lines[0].find("STATE"), lines[2].find("QUEUED"));
}

TEST(JobDetailsTest, RunDirectoryAndMessage) {
  v1::Job job = SampleJob();
  job.set_state_message("cancelled by alice");
  const std::string text = JobDetails(job, absl::FromUnixSeconds(1000));
  EXPECT_THAT(text, HasSubstr("run directory: /runs/demo-1\n"));
  EXPECT_THAT(text, HasSubstr("message: cancelled by alice\n"));
  EXPECT_THAT(text, Not(HasSubstr("latest checkpoint")));
}

TEST(CheckpointsTableTest, Columns) {
  google::protobuf::RepeatedPtrField<v1::Checkpoint> checkpoints;
  v1::Checkpoint* c = checkpoints.Add();
  c->set_name("jobs/a-1/checkpoints/step-000000000100");
  c->set_state(v1::CHECKPOINT_STATE_COMMITTED);
  c->set_step(100);
  c->set_stage(1);
  c->set_tokens_seen(409600);
  c->add_files()->set_path("model.safetensors");
  c->add_files()->set_path("optimizer.safetensors");
  std::vector<std::string> lines =
      absl::StrSplit(CheckpointsTable(checkpoints), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u);
  std::vector<std::string> header = absl::StrSplit(lines[0], ' ', absl::SkipEmpty());
  EXPECT_THAT(header, ::testing::ElementsAre("NAME", "STATE", "STEP", "STAGE", "TOKENS", "FILES"));
  std::vector<std::string> row = absl::StrSplit(lines[1], ' ', absl::SkipEmpty());
  EXPECT_THAT(row, ::testing::ElementsAre("jobs/a-1/checkpoints/step-000000000100", "COMMITTED",
                                          "100", "1", "409600", "2"));
  // An empty list is the header alone.
  EXPECT_EQ(CheckpointsTable({}), "NAME   STATE   STEP   STAGE   TOKENS   FILES\n");
}

TEST(WorkersTableTest, Columns) {
  google::protobuf::RepeatedPtrField<v1::Worker> workers;
  v1::Worker* w = workers.Add();
  w->set_name("workers/host-1");
  w->set_state(v1::WORKER_STATE_ASSIGNED);
  w->set_device(v1::DEVICE_KIND_CUDA);
  w->set_device_count(2);
  w->set_job("jobs/a-1");
  w->set_rank(1);
  w->mutable_last_heartbeat_time()->set_seconds(50);
  v1::Worker* idle = workers.Add();
  idle->set_name("workers/host-2");
  idle->set_state(v1::WORKER_STATE_IDLE);
  idle->set_device_count(1);
  std::vector<std::string> lines =
      absl::StrSplit(WorkersTable(workers, absl::FromUnixSeconds(53)), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  std::vector<std::string> header = absl::StrSplit(lines[0], ' ', absl::SkipEmpty());
  EXPECT_THAT(header,
              ::testing::ElementsAre("NAME", "STATE", "DEVICE", "JOB", "RANK", "LAST-HEARTBEAT"));
  std::vector<std::string> row = absl::StrSplit(lines[1], ' ', absl::SkipEmpty());
  EXPECT_THAT(
      row, ::testing::ElementsAre("workers/host-1", "ASSIGNED", "cuda(2)", "jobs/a-1", "1", "3s"));
  std::vector<std::string> row2 = absl::StrSplit(lines[2], ' ', absl::SkipEmpty());
  EXPECT_THAT(row2, ::testing::ElementsAre("workers/host-2", "IDLE", "cpu", "-", "-", "-"));
}

TEST(RenderTest, PicksTheFormat) {
  v1::ListJobsResponse response;
  *response.add_jobs() = SampleJob();
  EXPECT_EQ(Render(response, OutputFormat::kTable, "T\n").value(), "T\n");
  const nlohmann::json json =
      nlohmann::json::parse(Render(response, OutputFormat::kJson, "").value());
  EXPECT_EQ(json["jobs"][0]["name"], "jobs/demo-1");
  EXPECT_EQ(json["next_page_token"], "");
  YAML::Node yaml = YAML::Load(Render(response, OutputFormat::kYaml, "").value());
  EXPECT_EQ(yaml["jobs"][0]["state"].as<std::string>(), "JOB_STATE_RUNNING");
  EXPECT_EQ(yaml["next_page_token"].as<std::string>(), "");
}

}  // namespace
}  // namespace qtrain::cli
