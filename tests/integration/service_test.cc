// The service end to end: a real qtrain-coordinator, qtrain-worker daemons with their training
// children and the qtrain client on 127.0.0.1. Jobs run to the end through faults (a coordinator
// or a worker killed mid-stage, a worker stopped past its lease) and must end with the same bytes
// as `qtrain train` of the same spec; cancel and bad data end a job promptly and leave no
// training process behind.
//
// A failed test prints the logs of every process it ran; QTRAIN_SERVICE_TEST_LOGS=1 prints them
// for passing tests too.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"
#include "tests/integration/service_harness.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using testing_service::CheckpointStep;
using testing_service::Client;
using testing_service::CliOutput;
using testing_service::Coordinator;
using testing_service::Hash;
using testing_service::IsAlive;
using testing_service::JobId;
using testing_service::JobState;
using testing_service::JsonInt;
using testing_service::JsonString;
using testing_service::Process;
using testing_service::ProcessId;
using testing_service::ProgressStep;
using testing_service::WaitFor;
using testing_service::Worker;

// The job: stage 0 is steps 1..12, stage 1 steps 13..22; a checkpoint every 3 steps.
constexpr int64_t kStage0End = 12;
constexpr int64_t kTotalSteps = 22;
constexpr int64_t kKeepLast = 2;
// Slow enough that a test can act between two checkpoints on a busy machine.
constexpr int kSlowStepMs = 250;
constexpr int kFastStepMs = 10;
constexpr absl::Duration kJobTimeout = absl::Seconds(90);

// Mid-stage: a checkpoint is committed and the job is training past it, short of a stage end.
bool MidStageAfterCheckpoint(const json& job) {
  if (JobState(job) != "JOB_STATE_RUNNING") return false;
  const int64_t committed = CheckpointStep(JsonString(job, "latest_checkpoint"));
  const int64_t step = ProgressStep(job);
  return committed >= 3 && step > committed && step != kStage0End && step < kTotalSteps - 2;
}

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ =
        new fs::path(fs::path(::testing::TempDir()) / ("service_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    testing_cli::TrainingDataOptions options;
    options.words = {"the",         "worker", "trains", "a",           "model", "while",  "the",
                     "coordinator", "keeps",  "its",    "checkpoints", "and",   "events", "safe"};
    options.word_count = 30000;
    options.seed = 13;
    options.shard_tokens = 6000;  // several shards
    absl::StatusOr<testing_cli::TrainingData> data =
        testing_cli::PrepareTrainingData(*root_ / "data", options);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = new testing_cli::TrainingData(*std::move(data));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete data_;
    delete reference_;
  }

  void SetUp() override {
    testing_service::ForgetLogs();
    watchdog_ = std::make_unique<testing_service::Watchdog>(absl::Seconds(170));
    dir_ = *root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  void TearDown() override {
    if (HasFailure() || std::getenv("QTRAIN_SERVICE_TEST_LOGS") != nullptr) {
      std::cerr << "---- service logs ----\n" << testing_service::AllLogs() << "\n";
    }
    workers_.clear();  // training children first, then the daemons
    coordinator_.reset();
    watchdog_.reset();
  }

  // The spec of the test job, with `extra` YAML lines (e.g. "world: {max_restarts: 0}").
  static std::string SpecText(const std::string& name, const fs::path& manifest,
                              const std::string& extra = "") {
    return absl::StrCat(
        "name: ", name, "\nseed: 5\n",
        "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 128}}\n",
        "tokenizer: ", data_->tokenizer.string(), "\n", "data: {manifest: ", manifest.string(),
        ", validation_fraction: 0.1}\n", "curriculum:\n",
        "  - {name: short, seq_len: 32, tokens: 1536, micro_batch: 2}\n",
        "  - {name: long, seq_len: 64, tokens: 1280, micro_batch: 2, rope_theta: 100000}\n",
        "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n", "batch: {global_tokens: 128}\n",
        "checkpoint: {every_steps: 3, keep_last: ", kKeepLast, "}\n",
        "eval: {every_steps: 4, batches: 1}\n", extra);
  }
  fs::path WriteSpec(const std::string& file, const std::string& name,
                     const std::string& extra = "", fs::path manifest = {}) {
    if (manifest.empty()) manifest = data_->manifest;
    const fs::path path = dir_ / file;
    std::ofstream(path) << SpecText(name, manifest, extra);
    return path;
  }

  // `qtrain train` of the test job, once per test binary: the bytes every service run must
  // reproduce.
  struct Reference {
    std::string model, config, tokenizer;
  };
  static const Reference& LocalTraining() {
    if (reference_ == nullptr) {
      const fs::path run = *root_ / "reference";
      std::ofstream(*root_ / "reference.yaml") << SpecText("reference", data_->manifest);
      testing_cli::CliOptions options;
      options.env = {"OMP_NUM_THREADS=1"};
      options.address_space_bytes = 4ull << 30;
      options.timeout_seconds = 120;
      const testing_cli::CliResult trained =
          testing_cli::RunCli({testing_cli::QtrainBinary(), "train",
                               (*root_ / "reference.yaml").string(), "--run-dir", run.string()},
                              *root_ / "reference.log", options);
      EXPECT_EQ(trained.exit_code, 0) << trained;
      reference_ = new Reference{Hash(run / "final" / "model.safetensors"),
                                 Hash(run / "final" / "config.json"),
                                 Hash(run / "final" / "tokenizer.json")};
    }
    return *reference_;
  }
  static void ExpectSameAsLocalTraining(const std::string& run_directory) {
    const Reference& reference = LocalTraining();
    ASSERT_NE(reference.model, "missing");
    const fs::path final_dir = fs::path(run_directory) / "final";
    EXPECT_EQ(Hash(final_dir / "model.safetensors"), reference.model) << final_dir;
    EXPECT_EQ(Hash(final_dir / "config.json"), reference.config) << final_dir;
    EXPECT_EQ(Hash(final_dir / "tokenizer.json"), reference.tokenizer) << final_dir;
  }

  void StartCoordinator(double lease_seconds) {
    testing_service::CoordinatorOptions options;
    options.state_dir = dir_ / "state";
    options.run_root = dir_ / "runs";
    options.lease_seconds = lease_seconds;
    options.log_dir = dir_ / "logs";
    auto coordinator = Coordinator::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    client_ = std::make_unique<Client>(coordinator_->address(), dir_ / "logs");
  }

  // Starts a worker and waits until it is registered; its id is ids_[name].
  Worker* StartWorker(const std::string& name, int step_delay_ms) {
    testing_service::WorkerOptions options;
    options.coordinator = coordinator_->address();
    options.work_dir = dir_ / "workers" / name;
    options.name = name;
    options.threads = 1;
    options.env = {absl::StrCat("QTRAIN_TEST_STEP_DELAY_MS=", step_delay_ms)};
    options.log = dir_ / "logs" / (name + ".log");
    auto worker = Worker::Start(options);
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return nullptr;
    absl::StatusOr<std::string> id = (*worker)->WaitForId(absl::Seconds(20));
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return nullptr;
    ids_[name] = *id;
    workers_.push_back(*std::move(worker));
    return workers_.back().get();
  }

  // `submit SPEC --request-id ID -o json`: the job.
  absl::StatusOr<json> Submit(const fs::path& spec, const std::string& request_id) {
    return client_->Json({"submit", spec.string(), "--request-id", request_id});
  }

  absl::StatusOr<json> WaitForJob(const std::string& job,
                                  const std::function<bool(const json&)>& done,
                                  absl::Duration timeout = kJobTimeout) {
    return testing_service::WaitForJob(*client_, job, done, timeout);
  }
  absl::StatusOr<json> WaitForEnd(const std::string& job) {
    return WaitForJob(job, [](const json& j) { return testing_service::IsTerminal(JobState(j)); });
  }

  // `watch JOB -o json` of a finished job: every event, and the watch's exit code.
  std::vector<json> Events(const std::string& job, int* exit_code = nullptr) {
    const CliOutput watched = client_->Run({"watch", job, "-o", "json"}, 30);
    EXPECT_FALSE(watched.result.timed_out) << watched.Describe();
    if (exit_code != nullptr) *exit_code = watched.result.exit_code;
    std::vector<json> events;
    for (const absl::string_view line : absl::StrSplit(watched.out, '\n', absl::SkipEmpty())) {
      json event = json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_FALSE(event.is_discarded()) << "not JSON: " << line;
      if (!event.is_discarded()) events.push_back(std::move(event));
    }
    return events;
  }
  static std::vector<json> OfKind(const std::vector<json>& events, const std::string& kind) {
    std::vector<json> found;
    for (const json& e : events) {
      if (e.contains(kind)) found.push_back(e[kind]);
    }
    return found;
  }

  // The worker (of those started) whose id is the job's current rank 0.
  Worker* RankZero(const json& job) {
    if (!job.contains("workers") || job["workers"].empty()) return nullptr;
    const std::string name = job["workers"][0].get<std::string>();
    for (const auto& worker : workers_) {
      if ("workers/" + ids_[worker->options().name] == name) return worker.get();
    }
    return nullptr;
  }

  // With the job `id` running on the one worker started so far, starts a second one (slow too,
  // so that the job stays mid-stage wherever it runs) and waits until the job is mid-stage
  // again. The job may have moved to the new worker at the stage boundary: `running` is the one
  // that runs it now.
  struct Placement {
    Worker* running = nullptr;
    Worker* other = nullptr;
    json job;
  };
  absl::StatusOr<Placement> AddIdleWorkerMidStage(const std::string& id) {
    QTRAIN_RETURN_IF_ERROR(WaitForJob(id, MidStageAfterCheckpoint).status());
    if (StartWorker("beta", kSlowStepMs) == nullptr) {
      return absl::InternalError("the second worker did not start");
    }
    Placement placed;
    QTRAIN_ASSIGN_OR_RETURN(placed.job, WaitForJob(id, MidStageAfterCheckpoint));
    placed.running = RankZero(placed.job);
    if (placed.running == nullptr) {
      return absl::InternalError(absl::StrCat("no started worker runs ", placed.job.dump()));
    }
    placed.other = placed.running == workers_[0].get() ? workers_[1].get() : workers_[0].get();
    return placed;
  }

  // `workers -o json`: worker resource name -> state.
  std::map<std::string, std::string> WorkerStates() {
    std::map<std::string, std::string> states;
    absl::StatusOr<json> listed = client_->Json({"workers"});
    if (!listed.ok() || !listed->contains("workers")) return states;
    for (const json& w : (*listed)["workers"])
      states[JsonString(w, "name")] = JsonString(w, "state");
    return states;
  }

  static bool AllGone(const std::vector<ProcessId>& processes) {
    return std::none_of(processes.begin(), processes.end(), IsAlive);
  }

  static fs::path* root_;
  static testing_cli::TrainingData* data_;
  static Reference* reference_;
  fs::path dir_;
  std::unique_ptr<testing_service::Watchdog> watchdog_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, std::string> ids_;  // worker --name -> worker id
};

fs::path* ServiceTest::root_ = nullptr;
testing_cli::TrainingData* ServiceTest::data_ = nullptr;
ServiceTest::Reference* ServiceTest::reference_ = nullptr;

TEST_F(ServiceTest, TwoStageJobEndsWithTheBytesOfLocalTraining) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/10));
  ASSERT_NE(StartWorker("alpha", kFastStepMs), nullptr);
  absl::StatusOr<json> submitted = Submit(WriteSpec("job.yaml", "plain"), "plain-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  EXPECT_EQ(id, "plain-1");
  EXPECT_EQ(JsonString(*submitted, "request_id"), "plain-1");

  int watch_exit = -1;
  const std::vector<json> events = Events(id, &watch_exit);
  EXPECT_EQ(watch_exit, 0);
  absl::StatusOr<json> job = client_->GetJob(id);
  ASSERT_OK(job);
  EXPECT_EQ(JobState(*job), "JOB_STATE_SUCCEEDED") << job->dump();
  const std::string run_directory = JsonString(*job, "run_directory");
  EXPECT_EQ(fs::path(run_directory), dir_ / "runs" / id);
  ASSERT_TRUE(job->contains("restarts")) << "primitive fields are printed: " << job->dump();
  EXPECT_EQ(JsonInt(*job, "restarts"), 0);
  EXPECT_EQ(ProgressStep(*job), kTotalSteps) << job->dump();
  EXPECT_EQ(JsonInt((*job)["progress"], "total_steps"), kTotalSteps) << job->dump();
  ExpectSameAsLocalTraining(run_directory);

  // The events: both stage starts, a checkpoint event per commit, the state ending SUCCEEDED.
  const std::vector<json> stages = OfKind(events, "stage_started");
  ASSERT_EQ(stages.size(), 2u) << json(events).dump();
  EXPECT_EQ(JsonInt(stages[0], "stage"), 0);
  EXPECT_EQ(JsonInt(stages[1], "stage"), 1);
  EXPECT_EQ(JsonInt(stages[1], "step"), kStage0End);
  std::set<int64_t> event_steps;
  for (const json& c : OfKind(events, "checkpoint")) event_steps.insert(JsonInt(c, "step"));
  EXPECT_TRUE(event_steps.count(kStage0End) && event_steps.count(kTotalSteps))
      << json(events).dump();
  EXPECT_GE(event_steps.size(), 6u);
  const std::vector<json> changes = OfKind(events, "state_changed");
  ASSERT_FALSE(changes.empty());
  EXPECT_EQ(JsonString(changes.back(), "to"), "JOB_STATE_SUCCEEDED");
  EXPECT_TRUE(OfKind(events, "restarted").empty());
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GT(JsonInt(events[i], "sequence"), JsonInt(events[i - 1], "sequence"));
  }

  // Retention: the newest keep_last and each stage's final checkpoint stay, the rest is deleted.
  absl::StatusOr<json> listed = client_->Json({"checkpoints", id});
  ASSERT_OK(listed);
  std::map<int64_t, json> by_step;
  for (const json& c : (*listed)["checkpoints"]) by_step[JsonInt(c, "step")] = c;
  ASSERT_GE(by_step.size(), 6u) << listed->dump();
  std::set<int64_t> keep = {kStage0End, kTotalSteps};
  auto newest = by_step.rbegin();
  for (int64_t i = 0; i < kKeepLast; ++i, ++newest) keep.insert(newest->first);
  for (const auto& [step, c] : by_step) {
    SCOPED_TRACE(c.dump());
    EXPECT_EQ(event_steps.count(step), 1u);
    const fs::path directory = JsonString(c, "directory");
    EXPECT_EQ(directory,
              fs::path(run_directory) / "checkpoints" / fs::path(JsonString(c, "name")).filename());
    if (keep.count(step)) {
      EXPECT_EQ(JsonString(c, "state"), "CHECKPOINT_STATE_COMMITTED");
      EXPECT_TRUE(fs::is_directory(directory));
    } else {
      EXPECT_EQ(JsonString(c, "state"), "CHECKPOINT_STATE_DELETED");
      EXPECT_FALSE(fs::exists(directory));
    }
  }
}

TEST_F(ServiceTest, CoordinatorKilledMidStageRestartsWithTheJob) {
  // Down for longer than a lease: the restarted coordinator gives each worker a fresh lease from
  // its start, so the live round survives when the worker reconnects.
  constexpr double kLeaseSeconds = 4;
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(kLeaseSeconds));
  ASSERT_NE(StartWorker("alpha", kSlowStepMs), nullptr);
  const fs::path spec = WriteSpec("job.yaml", "durable");
  absl::StatusOr<json> submitted = Submit(spec, "durable-request");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  // A watch across the restart reconnects and sees the end.
  absl::StatusOr<std::unique_ptr<Process>> watch = client_->Spawn({"watch", id});
  ASSERT_OK(watch);

  absl::StatusOr<json> mid = WaitForJob(id, MidStageAfterCheckpoint);
  ASSERT_OK(mid);
  coordinator_->Kill();
  absl::SleepFor(absl::Seconds(kLeaseSeconds + 1));  // the worker keeps training meanwhile
  ASSERT_OK(coordinator_->Restart());

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_OK(done);
  EXPECT_EQ(JobState(*done), "JOB_STATE_SUCCEEDED") << done->dump();
  EXPECT_EQ(JsonInt(*done, "restarts"), 0) << "live rounds survive a coordinator restart";
  ExpectSameAsLocalTraining(JsonString(*done, "run_directory"));
  const std::optional<int> watched = (*watch)->Wait(absl::Seconds(20));
  ASSERT_TRUE(watched.has_value()) << "watch did not end after the job did";
  EXPECT_TRUE(WIFEXITED(*watched) && WEXITSTATUS(*watched) == 0) << (*watch)->DescribeStatus();

  absl::StatusOr<json> listed = client_->Json({"list"});
  ASSERT_OK(listed);
  ASSERT_EQ((*listed)["jobs"].size(), 1u) << listed->dump();
  EXPECT_EQ(JobId((*listed)["jobs"][0]), id);

  // CreateJob is idempotent per request_id across the restart; another spec under it is refused.
  absl::StatusOr<json> again = Submit(spec, "durable-request");
  ASSERT_OK(again);
  EXPECT_EQ(JobId(*again), id);
  const fs::path other = WriteSpec("other.yaml", "durable", "world: {max_restarts: 1}\n");
  const CliOutput conflict =
      client_->Run({"submit", other.string(), "--request-id", "durable-request"});
  EXPECT_TRUE(conflict.result.exited && conflict.result.exit_code == 1) << conflict.Describe();
  EXPECT_THAT(conflict.result.output, HasSubstr("ALREADY_EXISTS")) << conflict.Describe();
  listed = client_->Json({"list"});
  ASSERT_OK(listed);
  EXPECT_EQ((*listed)["jobs"].size(), 1u) << listed->dump();
}

TEST_F(ServiceTest, KilledWorkerIsReplacedFromTheLastCheckpoint) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/2));
  ASSERT_NE(StartWorker("alpha", kSlowStepMs), nullptr);
  absl::StatusOr<json> submitted = Submit(WriteSpec("job.yaml", "lost"), "lost-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<Placement> placed = AddIdleWorkerMidStage(id);
  ASSERT_OK(placed);
  Worker* killed = placed->running;
  const int64_t committed = CheckpointStep(JsonString(placed->job, "latest_checkpoint"));
  const std::vector<ProcessId> children = killed->TrainingChildren();
  ASSERT_EQ(children.size(), 1u);
  // SIGKILL the daemon alone: its child must go by itself.
  ASSERT_TRUE(killed->Signal(SIGKILL));
  ASSERT_TRUE(killed->process().Wait(absl::Seconds(5)).has_value());
  EXPECT_TRUE(WaitFor([&] { return AllGone(children); }, absl::Seconds(5)))
      << "the training child outlived its worker";

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_OK(done);
  EXPECT_EQ(JobState(*done), "JOB_STATE_SUCCEEDED") << done->dump();
  EXPECT_EQ(JsonInt(*done, "restarts"), 1) << done->dump();
  ExpectSameAsLocalTraining(JsonString(*done, "run_directory"));
  const std::vector<json> restarted = OfKind(Events(id), "restarted");
  ASSERT_EQ(restarted.size(), 1u);
  EXPECT_EQ(JsonInt(restarted[0], "restarts"), 1);
  const std::string resumed = JsonString(restarted[0], "resume_checkpoint");
  EXPECT_THAT(resumed, HasSubstr("jobs/" + id + "/checkpoints/step-"));
  EXPECT_GE(CheckpointStep(resumed), committed) << restarted[0].dump();
  EXPECT_FALSE(JsonString(restarted[0], "reason").empty()) << restarted[0].dump();
  EXPECT_EQ(WorkerStates()["workers/" + ids_[killed->options().name]], "WORKER_STATE_LOST");
}

TEST_F(ServiceTest, KilledWorkerWithoutRestartsLeftFailsTheJob) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/2));
  Worker* worker = StartWorker("alpha", kSlowStepMs);
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<json> submitted =
      Submit(WriteSpec("job.yaml", "fragile", "world: {max_restarts: 0}\n"), "fragile-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  ASSERT_OK(WaitForJob(id, MidStageAfterCheckpoint));
  ASSERT_TRUE(worker->Signal(SIGKILL));

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_OK(done);
  EXPECT_EQ(JobState(*done), "JOB_STATE_FAILED") << done->dump();
  EXPECT_EQ(JsonInt(*done, "restarts"), 0);
  const std::string message = JsonString(*done, "state_message");
  EXPECT_THAT(message, HasSubstr(ids_["alpha"])) << "names the lost worker";
  EXPECT_THAT(message, ::testing::ContainsRegex("restart")) << "names the exhausted budget";
  int watch_exit = -1;
  Events(id, &watch_exit);
  EXPECT_EQ(watch_exit, 1);
}

TEST_F(ServiceTest, StoppedWorkerIsReplacedAndItsStaleRoundRefused) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/2));
  ASSERT_NE(StartWorker("alpha", kSlowStepMs), nullptr);
  absl::StatusOr<json> submitted = Submit(WriteSpec("job.yaml", "stopped"), "stopped-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<Placement> placed = AddIdleWorkerMidStage(id);
  ASSERT_OK(placed);
  Worker* stopped = placed->running;
  const std::string stopped_name = "workers/" + ids_[stopped->options().name];
  const std::string other_name = "workers/" + ids_[placed->other->options().name];
  const int64_t round = JsonInt(placed->job, "round");
  const std::vector<ProcessId> children = stopped->TrainingChildren();
  ASSERT_EQ(children.size(), 1u);
  ASSERT_TRUE(stopped->Signal(SIGSTOP));
  const absl::Time stop_time = absl::Now();

  // Another round on the other worker, detected within about a lease.
  absl::StatusOr<json> moved = WaitForJob(
      id,
      [&](const json& j) {
        return JsonInt(j, "round") > round && j.contains("workers") && !j["workers"].empty() &&
               j["workers"][0] == other_name;
      },
      absl::Seconds(20));
  ASSERT_OK(moved);
  EXPECT_LT(absl::Now() - stop_time, absl::Seconds(10));
  EXPECT_EQ(WorkerStates()[stopped_name], "WORKER_STATE_LOST");

  ASSERT_TRUE(stopped->Signal(SIGCONT));
  EXPECT_TRUE(WaitFor([&] { return WorkerStates()[stopped_name] == "WORKER_STATE_IDLE"; },
                      absl::Seconds(15)))
      << "the stopped worker did not come back IDLE";
  EXPECT_TRUE(WaitFor([&] { return AllGone(children); }, absl::Seconds(5)))
      << "the stale round's training child still runs";

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_OK(done);
  EXPECT_EQ(JobState(*done), "JOB_STATE_SUCCEEDED") << done->dump();
  EXPECT_EQ(JsonInt(*done, "restarts"), 1);
  ExpectSameAsLocalTraining(JsonString(*done, "run_directory"));
}

TEST_F(ServiceTest, CancelStopsTheTrainingChild) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/10));
  Worker* worker = StartWorker("alpha", kSlowStepMs);
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<json> submitted = Submit(WriteSpec("job.yaml", "cancelled"), "cancelled-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<std::unique_ptr<Process>> watch = client_->Spawn({"watch", id});
  ASSERT_OK(watch);
  ASSERT_OK(WaitForJob(id, [](const json& j) {
    return JobState(j) == "JOB_STATE_RUNNING" && ProgressStep(j) >= 2;
  }));
  const std::vector<ProcessId> children = worker->TrainingChildren();
  ASSERT_EQ(children.size(), 1u);

  absl::StatusOr<json> cancelling = client_->Json({"cancel", id, "--reason", "not needed"});
  ASSERT_OK(cancelling);
  const absl::Time cancel_time = absl::Now();
  EXPECT_THAT(JobState(*cancelling),
              ::testing::AnyOf("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"));
  EXPECT_TRUE(WaitFor([&] { return AllGone(children); }, absl::Seconds(5)))
      << "the training child still runs 5 s after the cancel";
  EXPECT_LT(absl::Now() - cancel_time, absl::Seconds(6));

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_OK(done);
  EXPECT_EQ(JobState(*done), "JOB_STATE_CANCELLED") << done->dump();
  EXPECT_THAT(JsonString(*done, "state_message"), HasSubstr("not needed"));
  const std::optional<int> watched = (*watch)->Wait(absl::Seconds(20));
  ASSERT_TRUE(watched.has_value()) << "watch did not end after the cancel";
  EXPECT_TRUE(WIFEXITED(*watched) && WEXITSTATUS(*watched) == 2) << (*watch)->DescribeStatus();
  EXPECT_FALSE(fs::exists(fs::path(JsonString(*done, "run_directory")) / "final"));
  EXPECT_TRUE(
      WaitFor([&] { return WorkerStates()["workers/" + ids_["alpha"]] == "WORKER_STATE_IDLE"; },
              absl::Seconds(10)));
}

TEST_F(ServiceTest, EvalTasksAtEachStageEndAreJobEvents) {
  const fs::path choices = dir_ / "choices.jsonl";
  std::ofstream(choices)
      << R"({"context": "the worker", "choices": [" trains", " safe", " its"], "label": 0})"
         "\n"
      << R"({"context": "the coordinator keeps", "choices": [" a", " its"], "label": 1})"
         "\n"
      << R"({"context": "checkpoints and", "choices": [" events", " model", " while"], "label": 0})"
      << "\n";
  std::string spec = SpecText("evaluated", data_->manifest);
  const std::string eval_line = "eval: {every_steps: 4, batches: 1}\n";
  ASSERT_NE(spec.find(eval_line), std::string::npos);
  spec.replace(spec.find(eval_line), eval_line.size(),
               absl::StrCat("eval: {every_steps: 4, batches: 1, tasks: [{task: multiple-choice, "
                            "name: mc, data: ",
                            choices.string(), "}]}\n"));
  std::ofstream(dir_ / "job.yaml") << spec;
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/10));
  ASSERT_NE(StartWorker("alpha", kFastStepMs), nullptr);
  absl::StatusOr<json> submitted = Submit(dir_ / "job.yaml", "evaluated-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  int watch_exit = -1;
  const std::vector<json> events = Events(id, &watch_exit);
  EXPECT_EQ(watch_exit, 0);
  absl::StatusOr<json> job = client_->GetJob(id);
  ASSERT_OK(job);
  EXPECT_EQ(JobState(*job), "JOB_STATE_SUCCEEDED") << job->dump();
  // Evaluating does not change the weights.
  ExpectSameAsLocalTraining(JsonString(*job, "run_directory"));

  // One result per stage end, rank 0's, once each.
  const std::vector<json> results = OfKind(events, "eval_task");
  ASSERT_EQ(results.size(), 2u) << json(events).dump();
  for (size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE(results[i].dump());
    EXPECT_EQ(JsonString(results[i], "name"), "mc");
    EXPECT_EQ(JsonString(results[i], "task"), "multiple-choice");
    EXPECT_EQ(JsonInt(results[i], "step"), i == 0 ? kStage0End : kTotalSteps);
    EXPECT_EQ(results[i].value("final", false), i == 1);
    ASSERT_TRUE(results[i].contains("metrics") && results[i]["metrics"].contains("acc"));
    const double acc = results[i]["metrics"]["acc"].get<double>();
    EXPECT_GE(acc, 0.0);
    EXPECT_LE(acc, 1.0);
    EXPECT_EQ(results[i]["metrics"]["count"].get<double>(), 3);
  }
  // The run's metrics.jsonl has the same results.
  std::ifstream metrics(fs::path(JsonString(*job, "run_directory")) / "metrics.jsonl");
  int records = 0;
  for (std::string line; std::getline(metrics, line);) {
    records += line.find("\"event\":\"eval_task\"") != std::string::npos;
  }
  EXPECT_EQ(records, 2);
  // `qtrain watch` prints a line per result.
  const CliOutput watched = client_->Run({"watch", id}, 30);
  EXPECT_THAT(watched.out + watched.result.output,
              HasSubstr(absl::StrCat("eval mc (multiple-choice) at step ", kStage0End)));
  EXPECT_THAT(
      watched.out + watched.result.output,
      HasSubstr(absl::StrCat("eval mc (multiple-choice) at step ", kTotalSteps, " (final)")));
}

TEST_F(ServiceTest, MissingDataFailsTheJobAtOnce) {
  // Private copies of the shards: one loses its shard files, one its manifest, once submitted.
  for (const std::string copy : {"no_shards", "no_manifest"}) {
    fs::copy(data_->manifest.parent_path(), dir_ / copy, fs::copy_options::recursive);
  }
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/10));
  absl::StatusOr<json> no_shards = Submit(
      WriteSpec("no_shards.yaml", "noshards", "", dir_ / "no_shards" / "manifest.json"), "ns-1");
  ASSERT_OK(no_shards);
  absl::StatusOr<json> no_manifest = Submit(
      WriteSpec("no_manifest.yaml", "nomanifest", "", dir_ / "no_manifest" / "manifest.json"),
      "nm-1");
  ASSERT_OK(no_manifest);
  std::vector<std::string> shard_files;
  for (const auto& entry : fs::directory_iterator(dir_ / "no_shards")) {
    if (entry.path().filename() == "manifest.json") continue;
    shard_files.push_back(entry.path().filename().string());
    fs::remove(entry.path());
  }
  ASSERT_FALSE(shard_files.empty());
  fs::remove(dir_ / "no_manifest" / "manifest.json");
  Worker* worker = StartWorker("alpha", kFastStepMs);
  ASSERT_NE(worker, nullptr);

  absl::StatusOr<json> failed = WaitForEnd(JobId(*no_shards));
  ASSERT_OK(failed);
  EXPECT_EQ(JobState(*failed), "JOB_STATE_FAILED") << failed->dump();
  EXPECT_EQ(JsonInt(*failed, "restarts"), 0) << failed->dump();
  const std::string message = JsonString(*failed, "state_message");
  EXPECT_TRUE(
      std::any_of(shard_files.begin(), shard_files.end(),
                  [&](const std::string& f) { return message.find(f) != std::string::npos; }))
      << "names a missing shard: " << message;

  failed = WaitForEnd(JobId(*no_manifest));
  ASSERT_OK(failed);
  EXPECT_EQ(JobState(*failed), "JOB_STATE_FAILED") << failed->dump();
  EXPECT_EQ(JsonInt(*failed, "restarts"), 0) << failed->dump();
  EXPECT_THAT(JsonString(*failed, "state_message"),
              HasSubstr((dir_ / "no_manifest" / "manifest.json").string()));

  EXPECT_TRUE(WaitFor([&] { return worker->TrainingChildren().empty(); }, absl::Seconds(5)));
  EXPECT_TRUE(
      WaitFor([&] { return WorkerStates()["workers/" + ids_["alpha"]] == "WORKER_STATE_IDLE"; },
              absl::Seconds(10)));
}

}  // namespace
}  // namespace qtrain
