#include "worker/daemon/stage_child.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/run_dir_lock.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "qtrain/v1/stage.pb.h"
#include "qtrain/v1/worker.pb.h"
#include "worker/comm/communicator.h"
#include "worker/comm/in_process_communicator.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/daemon/cancellable_store.h"
#include "worker/daemon/group_connect.h"
#include "worker/model/flops.h"
#include "worker/model/opaque_backend_test_util.h"
#include "worker/train/job_setup.h"
#include "worker/train/opaque_communicator_test_util.h"
#include "worker/train/shard_assignment.h"
#include "worker/train/test_dataset.h"
#include "worker/train/trainer.h"

namespace qtrain::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(message, &out, print).ok());
  return out;
}

// The daemon's side of the pipes, in this process: runs RunStageChild on a thread, reads its
// events, answers its checkpoints with `ack` and pings it every 100 ms (unless told not to).
class FakeParent {
 public:
  using AckPolicy = std::function<v1::CheckpointAck(const v1::CommitCheckpointRequest&)>;

  FakeParent(StageChildOptions options, AckPolicy ack, bool ping = true) : ack_(std::move(ack)) {
    int events[2], control[2];
    EXPECT_EQ(::pipe(events), 0);
    EXPECT_EQ(::pipe(control), 0);
    events_read_ = events[0];
    events_write_ = events[1];
    control_read_ = control[0];
    control_write_ = control[1];
    options.events_fd = events_write_;
    options.control_fd = control_read_;
    reader_ = std::thread([this] { ReadEvents(); });
    if (ping) {
      pinger_ = std::thread([this] {
        while (!stop_pings_.load()) {
          Send(R"({"ping": {}})");
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      });
    }
    child_ = std::thread([this, options] {
      const int code = RunStageChild(options);
      absl::MutexLock lock(&mu_);
      exit_code_ = code;
      finished_ = true;
    });
  }
  ~FakeParent() { Wait(); }

  // Joins the child and closes everything. A child that runs past 120 s aborts the test
  // binary: a thread cannot be killed, and a hung test must not hang the suite.
  int Wait() {
    if (child_.joinable()) {
      {
        absl::MutexLock lock(&mu_);
        if (!mu_.AwaitWithTimeout(absl::Condition(&finished_), absl::Seconds(120))) {
          std::fprintf(stderr, "the stage child did not end within 120 s\n");
          std::abort();
        }
      }
      child_.join();
    }
    stop_pings_ = true;
    if (pinger_.joinable()) pinger_.join();
    if (events_write_ >= 0) ::close(events_write_), events_write_ = -1;
    if (reader_.joinable()) reader_.join();
    for (int* fd : {&events_read_, &control_read_, &control_write_}) {
      if (*fd >= 0) ::close(*fd), *fd = -1;
    }
    absl::MutexLock lock(&mu_);
    return exit_code_;
  }
  // The parent goes away: its end of the child's stdin closes.
  void CloseControl() {
    stop_pings_ = true;
    if (pinger_.joinable()) pinger_.join();
    absl::MutexLock lock(&mu_);
    ::close(control_write_);
    control_write_ = -1;
  }
  // Blocks until `predicate` holds for the events seen so far (or 60 s pass).
  bool WaitFor(const std::function<bool(const std::vector<v1::StageChildEvent>&)>& predicate) {
    absl::MutexLock lock(&mu_);
    const auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return predicate(events_); };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(60));
  }
  std::vector<v1::StageChildEvent> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  void Send(const std::string& line) {
    absl::MutexLock lock(&mu_);
    if (control_write_ < 0) return;
    const std::string text = line + "\n";
    (void)!::write(control_write_, text.data(), text.size());
  }
  void ReadEvents() {
    std::string buffer;
    char chunk[4096];
    while (true) {
      const ssize_t n = ::read(events_read_, chunk, sizeof(chunk));
      if (n <= 0) return;
      buffer.append(chunk, static_cast<size_t>(n));
      size_t end;
      while ((end = buffer.find('\n')) != std::string::npos) {
        v1::StageChildEvent event;
        const std::string line = buffer.substr(0, end);
        buffer.erase(0, end + 1);
        EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(line, &event).ok()) << line;
        {
          absl::MutexLock lock(&mu_);
          events_.push_back(event);
        }
        if (event.has_checkpoint() && ack_)
          Send(ToJson([&] {
            v1::StageParentMessage message;
            *message.mutable_checkpoint_ack() = ack_(event.checkpoint());
            return message;
          }()));
      }
    }
  }

  AckPolicy ack_;
  int events_read_ = -1, events_write_ = -1, control_read_ = -1, control_write_ = -1;
  std::atomic<bool> stop_pings_{false};
  std::thread reader_, pinger_, child_;
  absl::Mutex mu_;
  std::vector<v1::StageChildEvent> events_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int exit_code_ ABSL_GUARDED_BY(mu_) = -1;
};

v1::CheckpointAck Accept(const v1::CommitCheckpointRequest&) {
  v1::CheckpointAck ack;
  ack.set_ok(true);
  return ack;
}

// The error event the child ended with.
std::optional<v1::StageError> ErrorOf(const std::vector<v1::StageChildEvent>& events) {
  if (events.empty() || !events.back().has_error()) return std::nullopt;
  return events.back().error();
}

class StageChildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("stage_child_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    auto data = train::testing::WriteTestDataset(root_.string(), 70000, 1000);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = *data;
    auto spec = ParseJobSpec(train::testing::TestJobSpec(data_), "spec.yaml");
    ASSERT_TRUE(spec.ok()) << spec.status();
    spec_ = *spec;
  }
  void TearDown() override {
    unsetenv("QTRAIN_TEST_STEP_DELAY_MS");
    fs::remove_all(root_);
  }

  // The assignment of `stage` (0: steps 0-4, 1: steps 4-7), written to a file.
  std::string WriteAssignment(int stage, const v1::Checkpoint* resume_from = nullptr,
                              const std::string& name = "assignment.json") {
    v1::Assignment a;
    a.set_job("jobs/stage-test-1");
    *a.mutable_spec() = spec_;
    a.set_round(3);
    a.set_rank(rank_);
    a.set_world_size(world_);
    if (world_ > 1) a.set_rendezvous_prefix("jobs/stage-test-1/rounds/3/");
    a.set_stage(stage);
    a.set_start_step(stage == 0 ? 0 : 4);
    a.set_end_step(stage == 0 ? 4 : 7);
    if (resume_from != nullptr) *a.mutable_resume_from() = *resume_from;
    // The coordinator's choice, unless the test makes its own.
    a.set_backend(backend_                                         ? *backend_
                  : spec_.world().device() == v1::DEVICE_KIND_CUDA ? v1::COLLECTIVE_BACKEND_NCCL
                                                                   : v1::COLLECTIVE_BACKEND_GLOO);
    a.set_run_directory((root_ / "run").string());
    a.set_checkpoint_directory((root_ / "run" / "checkpoints").string());
    auto data =
        train::PlanShardAssignment(spec_, stage, a.start_step(), a.end_step(), rank_, world_);
    EXPECT_TRUE(data.ok()) << data.status();
    *a.mutable_data() = *data;
    const std::string path = (root_ / name).string();
    EXPECT_TRUE(WriteFileAtomically(path, ToJson(a)).ok());
    return path;
  }
  StageChildOptions Options(const std::string& assignment) {
    StageChildOptions options;
    options.assignment_path = assignment;
    options.threads = 1;
    options.lock_wait = absl::Seconds(5);
    return options;
  }
  // The committed checkpoint a coordinator would hand the next stage.
  static v1::Checkpoint Committed(const v1::CommitCheckpointRequest& request) {
    v1::Checkpoint c;
    c.set_step(request.step());
    c.set_stage(request.stage());
    c.set_tokens_seen(request.tokens_seen());
    c.set_directory(request.directory());
    *c.mutable_files() = request.files();
    c.set_data_plan_sha256(request.data_plan_sha256());
    c.set_state(v1::CHECKPOINT_STATE_COMMITTED);
    return c;
  }
  static std::vector<v1::CommitCheckpointRequest> Checkpoints(
      const std::vector<v1::StageChildEvent>& events) {
    std::vector<v1::CommitCheckpointRequest> out;
    for (const auto& e : events) {
      if (e.has_checkpoint()) out.push_back(e.checkpoint());
    }
    return out;
  }
  // Stage 0 run as a child, acked; returns its last checkpoint (step 4).
  v1::CommitCheckpointRequest RunStageZero() {
    FakeParent parent(Options(WriteAssignment(0)), Accept);
    EXPECT_EQ(parent.Wait(), kStageChildOk);
    const auto checkpoints = Checkpoints(parent.events());
    EXPECT_FALSE(checkpoints.empty());
    return checkpoints.empty() ? v1::CommitCheckpointRequest() : checkpoints.back();
  }

  // The next assignments' place in a group; a group of 2 fits the test spec (4 micro-batches).
  void UseGroup(int rank, int world) {
    rank_ = rank;
    world_ = world;
    spec_.mutable_world()->set_max_workers(std::max(world, 1));
  }

  fs::path root_;
  train::testing::TestDataset data_;
  v1::JobSpec spec_;
  int rank_ = 0;
  int world_ = 1;
  std::optional<v1::CollectiveBackend> backend_;
};

bool SawPhase(const std::vector<v1::StageChildEvent>& events, v1::WorkerPhase phase) {
  return std::any_of(events.begin(), events.end(),
                     [phase](const auto& e) { return e.has_phase() && e.phase() == phase; });
}

// What a connector was asked, and how often.
struct ConnectLog {
  absl::Mutex mu;
  std::vector<GroupMember> members ABSL_GUARDED_BY(mu);
  size_t calls() {
    absl::MutexLock lock(&mu);
    return members.size();
  }
};

// A connector that records its member and fails as a group whose peer never came.
GroupConnector FailingConnector(ConnectLog* log, absl::Status status) {
  return
      [log, status](const GroupMember& m) -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
        absl::MutexLock lock(&log->mu);
        log->members.push_back(m);
        return status;
      };
}

// A group whose peers never answer: every op blocks until Abort(), then fails CANCELLED.
class StuckCommunicator final : public comm::Communicator {
 public:
  StuckCommunicator(int rank, int world_size) : rank_(rank), world_size_(world_size) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string_view backend() const override { return "stuck"; }
  absl::Status Barrier() override { return Block(); }
  absl::Status Broadcast(std::span<std::byte>, int) override { return Block(); }
  absl::Status AllReduceSum(std::span<float>) override { return Block(); }
  absl::Status AllReduceSum(std::span<double>) override { return Block(); }
  absl::Status ReduceScatterSum(std::span<const float>, std::span<float>,
                                const comm::ShardLayout&) override {
    return Block();
  }
  absl::Status AllGather(std::span<const float>, std::span<float>,
                         const comm::ShardLayout&) override {
    return Block();
  }
  absl::Status AllGatherV(std::span<const double>, std::span<double>,
                          std::span<const int64_t>) override {
    return Block();
  }
  void Abort() override {
    absl::MutexLock lock(&mu_);
    aborted_ = true;
  }
  comm::CommStats stats() const override { return {}; }

  // Ops that were blocked (or started) when the group was aborted.
  static std::atomic<int> blocked_ops;

 private:
  absl::Status Block() {
    ++blocked_ops;
    absl::MutexLock lock(&mu_);
    // A hung peer: no timeout of its own here, only an abort ends the wait (120 s: the test's).
    if (!mu_.AwaitWithTimeout(absl::Condition(&aborted_), absl::Seconds(120))) {
      return absl::DeadlineExceededError("the test's stuck op was never aborted");
    }
    return absl::CancelledError("collective aborted");
  }

  const int rank_, world_size_;
  absl::Mutex mu_;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
};
std::atomic<int> StuckCommunicator::blocked_ops{0};

// A store whose keys are never set: Get waits for its deadline.
class EmptyStore final : public comm::RendezvousStore {
 public:
  absl::Status Set(const std::string&, const std::string&) override { return absl::OkStatus(); }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) override {
    absl::SleepFor(std::max(absl::ZeroDuration(), deadline - absl::Now()));
    ++gets;
    return absl::DeadlineExceededError(absl::StrCat("key ", key, " not set"));
  }
  std::atomic<int> gets{0};
};

TEST_F(StageChildTest, TwoStagesAsTwoChildrenEndLikeOneUninterruptedRun) {
  // The reference: `qtrain train`'s steps in this process.
  auto job = train::PrepareJob(spec_);
  ASSERT_TRUE(job.ok()) << job.status();
  train::TrainerOptions options;
  options.run_dir = (root_ / "reference").string();
  auto trainer = train::Trainer::Create(spec_, job->config, std::nullopt, *job->data, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto summary = (*trainer)->Run();
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_TRUE(train::WriteTokenizerFiles(job->tokenizer_files, summary->final_dir).ok());

  // Stage 0 from the initialization.
  FakeParent first(Options(WriteAssignment(0)), Accept);
  ASSERT_EQ(first.Wait(), kStageChildOk);
  const auto events = first.events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front().phase(), v1::WORKER_PHASE_LOADING);
  std::vector<int64_t> steps;
  bool training = false, checkpointing = false, evaluating = false;
  for (const auto& e : events) {
    if (e.has_progress()) {
      steps.push_back(e.progress().step());
      EXPECT_EQ(e.progress().job(), "jobs/stage-test-1");
      EXPECT_EQ(e.progress().round(), 3);
      EXPECT_EQ(e.progress().stage(), 0);
      EXPECT_EQ(e.progress().total_steps(), 7);
      EXPECT_EQ(e.progress().tokens_seen(), e.progress().step() * 256);
      EXPECT_GT(e.progress().loss(), 0);
      EXPECT_EQ(e.progress().has_eval_loss(), e.progress().step() == 3);
      // The step's timings, this rank's tokens, the model's FLOPs and the process's memory.
      const v1::WorkerProgress& p = e.progress();
      EXPECT_GT(p.step_seconds(), 0);
      EXPECT_GE(p.data_wait_seconds(), 0);
      EXPECT_GE(p.comm_seconds(), 0);
      EXPECT_LE(p.data_wait_seconds() + p.comm_seconds(), p.step_seconds());
      EXPECT_EQ(p.rank_tokens(), 256);  // the global batch, one rank
      EXPECT_DOUBLE_EQ(p.flops_per_token(),
                       model::FlopsPerToken(job->config, spec_.curriculum(0).seq_len()));
      EXPECT_GT(p.memory_bytes(), 1 << 20);
    }
    training |= e.phase() == v1::WORKER_PHASE_TRAINING;
    checkpointing |= e.phase() == v1::WORKER_PHASE_CHECKPOINTING;
    evaluating |= e.phase() == v1::WORKER_PHASE_EVALUATING;
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(training && checkpointing && evaluating);
  ASSERT_TRUE(events.back().has_done());
  EXPECT_EQ(events.back().done().stage(), 0);
  EXPECT_EQ(events.back().done().step(), 4);
  EXPECT_EQ(events.back().done().final_directory(), "");
  const auto checkpoints = Checkpoints(events);
  ASSERT_EQ(checkpoints.size(), 2u);  // steps 2 and 4
  const v1::CommitCheckpointRequest& end = checkpoints[1];
  EXPECT_EQ(end.step(), 4);
  EXPECT_EQ(end.stage(), 0);
  EXPECT_EQ(end.job(), "jobs/stage-test-1");
  EXPECT_EQ(end.round(), 3);
  EXPECT_EQ(end.tokens_seen(), 4 * 256);
  EXPECT_EQ(end.data_plan_sha256().size(), 64u);
  EXPECT_GT(end.write_seconds(), 0);
  EXPECT_EQ(end.directory(), (root_ / "run" / "checkpoints" / "step-000000000004").string());
  std::vector<std::string> names;
  for (const auto& file : end.files()) {
    names.push_back(file.path());
    const std::string path = end.directory() + "/" + file.path();
    EXPECT_EQ(Sha256File(path).value(), file.sha256()) << path;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(path)), file.size_bytes());
  }
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("config.json", "model.safetensors",
                                                     "optimizer-00000-of-00001.safetensors",
                                                     "manifest.json"));
  // Nothing deleted: retention is the coordinator's.
  EXPECT_TRUE(fs::exists(root_ / "run" / "checkpoints" / "step-000000000002"));

  // Stage 1 from the committed checkpoint, as a second child.
  const v1::Checkpoint committed = Committed(end);
  FakeParent second(Options(WriteAssignment(1, &committed)), Accept);
  ASSERT_EQ(second.Wait(), kStageChildOk);
  const auto later = second.events();
  ASSERT_TRUE(later.back().has_done()) << later.back().DebugString();
  EXPECT_EQ(later.back().done().step(), 7);
  EXPECT_EQ(later.back().done().final_directory(), (root_ / "run" / "final").string());
  for (const char* file :
       {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}) {
    SCOPED_TRACE(file);
    EXPECT_EQ(Sha256File((root_ / "run" / "final" / file).string()).value(),
              Sha256File((root_ / "reference" / "final" / file).string()).value());
  }
}

TEST_F(StageChildTest, EvalTaskResultsFollowTheStagesLastStepBeforeItsCheckpoint) {
  const std::string choices = (root_ / "choices.jsonl").string();
  ASSERT_TRUE(WriteFileAtomically(choices,
                                  "{\"context\": \"the\", \"choices\": [\" token\", \" shard\"], "
                                  "\"label\": 0}\n{\"context\": \"then\", \"choices\": [\" the\", "
                                  "\" tokens\", \" shard\"], \"label\": 2}\n")
                  .ok());
  v1::EvalTaskSpec* task = spec_.mutable_eval()->add_tasks();
  task->set_task("multiple-choice");
  task->set_name("mc");
  task->set_data(choices);
  FakeParent parent(Options(WriteAssignment(0)), Accept);
  ASSERT_EQ(parent.Wait(), kStageChildOk);
  const auto events = parent.events();
  int with_results = -1, last_step = -1, stage_checkpoint = -1;
  for (int i = 0; i < static_cast<int>(events.size()); ++i) {
    const v1::StageChildEvent& e = events[i];
    if (e.has_progress() && e.progress().eval_tasks_size() > 0) {
      ASSERT_EQ(with_results, -1) << "one progress with the results";
      with_results = i;
    } else if (e.has_progress() && e.progress().step() == 4) {
      last_step = i;
    }
    if (e.has_checkpoint() && e.checkpoint().step() == 4) stage_checkpoint = i;
  }
  ASSERT_GE(with_results, 0);
  EXPECT_LT(last_step, with_results);
  EXPECT_LT(with_results, stage_checkpoint);
  const v1::WorkerProgress& p = events[with_results].progress();
  // The last step's progress again, with the results.
  EXPECT_EQ(p.job(), "jobs/stage-test-1");
  EXPECT_EQ(p.round(), 3);
  EXPECT_EQ(p.step(), 4);
  EXPECT_EQ(p.tokens_seen(), events[last_step].progress().tokens_seen());
  const v1::EvalTaskResult& r = p.eval_tasks(0);
  EXPECT_EQ(r.name(), "mc");
  EXPECT_EQ(r.task(), "multiple-choice");
  EXPECT_EQ(r.stage(), 0);
  EXPECT_EQ(r.step(), 4);
  EXPECT_FALSE(r.final());
  ASSERT_TRUE(r.metrics().contains("acc"));
  EXPECT_GE(r.metrics().at("acc"), 0.0);
  EXPECT_LE(r.metrics().at("acc"), 1.0);
  EXPECT_EQ(r.metrics().at("count"), 2);
  EXPECT_TRUE(SawPhase(events, v1::WORKER_PHASE_EVALUATING));
}

TEST_F(StageChildTest, ABadEvalDataFileFailsBeforeTraining) {
  v1::EvalTaskSpec* task = spec_.mutable_eval()->add_tasks();
  task->set_task("generation");
  task->set_data((root_ / "missing.jsonl").string());
  FakeParent parent(Options(WriteAssignment(0)), Accept);
  EXPECT_NE(parent.Wait(), kStageChildOk);
  const auto events = parent.events();
  EXPECT_TRUE(
      std::none_of(events.begin(), events.end(), [](const auto& e) { return e.has_progress(); }));
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_error());
  EXPECT_EQ(events.back().error().code(), "NOT_FOUND");
  EXPECT_THAT(events.back().error().message(), HasSubstr("eval.tasks[0].data"));
  EXPECT_FALSE(events.back().error().retryable());
}

TEST_F(StageChildTest, ARefusedCheckpointStopsTheChild) {
  FakeParent parent(Options(WriteAssignment(0)), [](const v1::CommitCheckpointRequest&) {
    v1::CheckpointAck ack;
    ack.set_message("round 3 of jobs/stage-test-1 is over; the current round is 4");
    return ack;
  });
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  const auto events = parent.events();
  std::optional<v1::StageError> error = ErrorOf(events);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "ABORTED");
  EXPECT_THAT(error->message(), HasSubstr("checkpoint of step 2 was not committed: round 3"));
  EXPECT_TRUE(error->retryable());
  EXPECT_EQ(Checkpoints(events).size(), 1u);  // it waited for the answer, and stopped
}

TEST_F(StageChildTest, AParentThatGoesAwayEndsTheChild) {
  setenv("QTRAIN_TEST_STEP_DELAY_MS", "200", 1);
  FakeParent parent(Options(WriteAssignment(0)), Accept);
  ASSERT_TRUE(parent.WaitFor([](const auto& events) {
    return std::any_of(events.begin(), events.end(),
                       [](const auto& e) { return e.has_progress(); });
  }));
  parent.CloseControl();
  EXPECT_EQ(parent.Wait(), kStageChildOrphaned);
  for (const auto& e : parent.events()) EXPECT_FALSE(e.has_done());
}

TEST_F(StageChildTest, ASilentParentEndsTheChild) {
  setenv("QTRAIN_TEST_STEP_DELAY_MS", "200", 1);
  StageChildOptions options = Options(WriteAssignment(0));
  options.parent_timeout = absl::Milliseconds(300);
  FakeParent parent(options, Accept, /*ping=*/false);
  EXPECT_EQ(parent.Wait(), kStageChildOrphaned);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->message(), HasSubstr("no message from the parent"));
}

TEST_F(StageChildTest, SigtermStopsItBetweenSteps) {
  setenv("QTRAIN_TEST_STEP_DELAY_MS", "200", 1);
  FakeParent parent(Options(WriteAssignment(0)), Accept);
  ASSERT_TRUE(parent.WaitFor([](const auto& events) {
    return std::any_of(events.begin(), events.end(),
                       [](const auto& e) { return e.has_progress(); });
  }));
  ::kill(::getpid(), SIGTERM);  // handled by the child's handler while it runs
  EXPECT_EQ(parent.Wait(), kStageChildCancelled);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "CANCELLED");
}

TEST_F(StageChildTest, ItWaitsABoundedTimeForTheRunDirectory) {
  auto held = RunDirLock::Acquire((root_ / "run").string());
  ASSERT_TRUE(held.ok()) << held.status();
  StageChildOptions options = Options(WriteAssignment(0));
  options.lock_wait = absl::Milliseconds(400);
  FakeParent refused(options, Accept);
  EXPECT_EQ(refused.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(refused.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "UNAVAILABLE");
  EXPECT_THAT(error->message(), HasSubstr(absl::StrCat("held by process ", ::getpid())));
  EXPECT_TRUE(error->retryable());
  // A holder that lets go in time.
  options.lock_wait = absl::Seconds(30);
  FakeParent waited(options, Accept);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  held->Release();
  EXPECT_EQ(waited.Wait(), kStageChildOk);
}

TEST_F(StageChildTest, AMissingShardIsNotRetryable) {
  const std::string assignment = WriteAssignment(0);
  v1::Assignment a;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(ReadFileToString(assignment).value(), &a).ok());
  const std::string shard = a.data().shards(0).path();
  ASSERT_TRUE(fs::remove(root_ / "data" / shard));
  FakeParent parent(Options(assignment), Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "NOT_FOUND");
  EXPECT_THAT(error->message(), HasSubstr(shard));
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, AChangedManifestIsNotRetryable) {
  const std::string assignment = WriteAssignment(0);
  const std::string manifest = ReadFileToString(data_.manifest_path).value();
  ASSERT_TRUE(WriteFileAtomically(data_.manifest_path, manifest + "\n").ok());
  FakeParent parent(Options(assignment), Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "FAILED_PRECONDITION");
  EXPECT_THAT(error->message(), HasSubstr("changed since the job was scheduled"));
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, AResumeCheckpointUnlikeTheCommittedOneIsDataLoss) {
  v1::Checkpoint committed = Committed(RunStageZero());
  ASSERT_GT(committed.files_size(), 0);
  committed.mutable_files(0)->set_sha256(std::string(64, '0'));
  FakeParent parent(Options(WriteAssignment(1, &committed)), Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "DATA_LOSS");
  EXPECT_THAT(error->message(), HasSubstr(committed.files(0).path()));
}

TEST_F(StageChildTest, BadAssignmentFilesAreUsageErrors) {
  FakeParent missing(Options((root_ / "nope.json").string()), Accept);
  EXPECT_EQ(missing.Wait(), kStageChildUsage);
  std::optional<v1::StageError> error = ErrorOf(missing.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "NOT_FOUND");
  EXPECT_FALSE(error->retryable());

  ASSERT_TRUE(WriteFileAtomically((root_ / "bad.json").string(), "{\"job\": 3, ").ok());
  FakeParent bad(Options((root_ / "bad.json").string()), Accept);
  EXPECT_EQ(bad.Wait(), kStageChildUsage);
  error = ErrorOf(bad.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "INVALID_ARGUMENT");
  EXPECT_THAT(error->message(), HasSubstr("bad.json"));

  // A well-formed assignment that does not fit its spec: steps that do not end the stage.
  const std::string path = WriteAssignment(0);
  v1::Assignment a;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ReadFileToString(path).value(), &a).ok());
  a.set_end_step(3);
  ASSERT_TRUE(WriteFileAtomically(path, ToJson(a)).ok());
  FakeParent short_stage(Options(path), Accept);
  EXPECT_EQ(short_stage.Wait(), kStageChildFailed);
  error = ErrorOf(short_stage.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "INVALID_ARGUMENT");
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, BadGroupFlagsAreUsageErrors) {
  struct Case {
    std::function<void(StageChildOptions&)> set;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](StageChildOptions& o) { o.worker = "fake-1"; }, "--worker: 'fake-1' is not a worker"},
      {[](StageChildOptions& o) { o.worker = "workers/"; }, "--worker"},
      {[](StageChildOptions& o) { o.peer_host = ""; }, "--peer-host: is empty"},
      {[](StageChildOptions& o) { o.peer_host = "a b"; }, "--peer-host: 'a b'"},
      {[](StageChildOptions& o) { o.collective_timeout = absl::ZeroDuration(); },
       "--collective-timeout-ms: must be positive"},
      {[](StageChildOptions& o) { o.collective_timeout = absl::Hours(48); },
       "--collective-timeout-ms"},
  };
  const std::string assignment = WriteAssignment(0);
  for (const Case& c : cases) {
    StageChildOptions options = Options(assignment);
    c.set(options);
    FakeParent parent(options, Accept);
    EXPECT_EQ(parent.Wait(), kStageChildUsage) << c.needle;
    std::optional<v1::StageError> error = ErrorOf(parent.events());
    ASSERT_TRUE(error.has_value()) << c.needle;
    EXPECT_EQ(error->code(), "INVALID_ARGUMENT");
    EXPECT_FALSE(error->retryable());
    EXPECT_THAT(error->message(), HasSubstr(c.needle));
  }
  EXPECT_FALSE(fs::exists(root_ / "run" / "checkpoints"));
}

TEST_F(StageChildTest, ARankOutsideItsWorldIsRefused) {
  UseGroup(1, 2);
  const std::string path = WriteAssignment(0);
  v1::Assignment a;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(*ReadFileToString(path, 1 << 24), &a).ok());
  a.set_rank(2);
  ASSERT_TRUE(WriteFileAtomically(path, ToJson(a)).ok());
  FakeParent parent(Options(path), Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "INVALID_ARGUMENT");
  EXPECT_THAT(error->message(), HasSubstr("assignment: rank 2 of 2 workers"));
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, AGroupNeedsAConnector) {
  UseGroup(0, 2);
  FakeParent parent(Options(WriteAssignment(0)), Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "FAILED_PRECONDITION");
  EXPECT_THAT(error->message(), HasSubstr("world_size 2, and this worker cannot join a group"));
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, ARankAboveZeroTakesNoRunDirectoryLock) {
  // Rank 0 (here: the test) holds the run directory; rank 1 goes on to its rendezvous at once.
  auto held = RunDirLock::Acquire((root_ / "run").string());
  ASSERT_TRUE(held.ok()) << held.status();
  UseGroup(1, 2);
  ConnectLog log;
  StageChildOptions options = Options(WriteAssignment(0));
  options.lock_wait = absl::Seconds(60);
  options.worker = "workers/w-2";
  options.peer_host = "127.0.0.1";
  options.coordinator.address = "127.0.0.1:7070";
  options.collective_timeout = absl::Seconds(9);
  options.connect_group =
      FailingConnector(&log, absl::DeadlineExceededError("rank 0 did not show up within 9s"));
  const absl::Time start = absl::Now();
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "DEADLINE_EXCEEDED");
  EXPECT_THAT(error->message(),
              HasSubstr("joining the group of 2 workers as rank 1: rank 0 did not show up"));
  EXPECT_TRUE(error->retryable());  // a new group may do better
  EXPECT_TRUE(SawPhase(parent.events(), v1::WORKER_PHASE_RENDEZVOUS));
  absl::MutexLock lock(&log.mu);
  ASSERT_EQ(log.members.size(), 1u);
  const GroupMember& m = log.members[0];
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.world_size, 2);
  EXPECT_EQ(m.job, "jobs/stage-test-1");
  EXPECT_EQ(m.round, 3);
  EXPECT_EQ(m.rendezvous_prefix, "jobs/stage-test-1/rounds/3/");
  EXPECT_EQ(m.worker, "workers/w-2");
  EXPECT_EQ(m.peer_host, "127.0.0.1");
  EXPECT_EQ(m.coordinator.address, "127.0.0.1:7070");
  EXPECT_EQ(m.timeout, absl::Seconds(9));
}

TEST_F(StageChildTest, RankZeroOfAGroupTakesTheLockBeforeJoining) {
  auto held = RunDirLock::Acquire((root_ / "run").string());
  ASSERT_TRUE(held.ok()) << held.status();
  UseGroup(0, 2);
  ConnectLog log;
  StageChildOptions options = Options(WriteAssignment(0));
  options.lock_wait = absl::Milliseconds(300);
  options.connect_group = FailingConnector(&log, absl::DeadlineExceededError("unexpected"));
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "UNAVAILABLE");
  EXPECT_THAT(error->message(), HasSubstr(absl::StrCat("held by process ", ::getpid())));
  EXPECT_EQ(log.calls(), 0u);
}

TEST_F(StageChildTest, ABadGroupSetupIsNotRetryable) {
  UseGroup(1, 2);
  ConnectLog log;
  StageChildOptions options = Options(WriteAssignment(0));
  options.connect_group =
      FailingConnector(&log, absl::InvalidArgumentError("--coordinator is required"));
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "INVALID_ARGUMENT");
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, SigtermDuringTheRendezvousEndsTheChild) {
  UseGroup(1, 2);
  auto store = std::make_shared<EmptyStore>();
  StageChildOptions options = Options(WriteAssignment(0));
  options.collective_timeout = absl::Seconds(60);
  options.connect_group =
      [store](const GroupMember& m) -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
    // What a Gloo rendezvous does first: wait for a peer's address.
    std::shared_ptr<comm::RendezvousStore> cancellable =
        MakeCancellableStore(store, m.cancelled, absl::Milliseconds(50));
    absl::StatusOr<std::string> peer =
        cancellable->Get(m.rendezvous_prefix + "0", absl::Now() + m.timeout);
    if (!peer.ok()) return peer.status();
    return absl::InternalError("the empty store had a key");
  };
  FakeParent parent(options, Accept);
  ASSERT_TRUE(parent.WaitFor(
      [](const auto& events) { return SawPhase(events, v1::WORKER_PHASE_RENDEZVOUS); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const absl::Time signalled = absl::Now();
  ::kill(::getpid(), SIGTERM);
  EXPECT_EQ(parent.Wait(), kStageChildCancelled);
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(5));
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "CANCELLED");
  EXPECT_THAT(error->message(), HasSubstr("rendezvous"));
  EXPECT_TRUE(error->retryable());
  EXPECT_GT(store->gets.load(), 1);  // it waited in slices
}

TEST_F(StageChildTest, APeerThatNeverComesFailsWithinTheTimeout) {
  // Rank 1 of 2 over Gloo; rank 0 never shows up.
  UseGroup(1, 2);
  auto store = comm::MakeInMemoryStore();
  StageChildOptions options = Options(WriteAssignment(0));
  options.collective_timeout = absl::Seconds(2);
  options.connect_group = [store](const GroupMember& m) { return ConnectGlooGroupOver(m, store); };
  const absl::Time start = absl::Now();
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "DEADLINE_EXCEEDED") << error->message();
  EXPECT_THAT(error->message(), HasSubstr("joining the group of 2 workers as rank 1"));
  EXPECT_TRUE(error->retryable());
}

TEST_F(StageChildTest, AGroupWithoutTheCoordinatorIsRefused) {
  // The production connector needs the coordinator (the rendezvous) and the worker's name.
  UseGroup(1, 2);
  StageChildOptions options = Options(WriteAssignment(0));
  options.connect_group = ConnectGlooGroup;
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "INVALID_ARGUMENT") << error->message();
  EXPECT_THAT(error->message(), HasSubstr("--coordinator"));
  EXPECT_FALSE(error->retryable());
}

TEST_F(StageChildTest, SigtermAbortsACollectiveThatWaitsForAPeer) {
  UseGroup(0, 2);
  StuckCommunicator::blocked_ops = 0;
  StageChildOptions options = Options(WriteAssignment(0));
  options.connect_group =
      [](const GroupMember& m) -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
    return std::make_unique<StuckCommunicator>(m.rank, m.world_size);
  };
  FakeParent parent(options, Accept);
  // Wait until the trainer is blocked in a collective.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (StuckCommunicator::blocked_ops.load() == 0 && absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(StuckCommunicator::blocked_ops.load(), 0) << "no collective was called";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const absl::Time signalled = absl::Now();
  ::kill(::getpid(), SIGTERM);
  EXPECT_EQ(parent.Wait(), kStageChildCancelled);
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(5));
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "CANCELLED");
  EXPECT_TRUE(error->retryable());
}

// A CUDA group of two on a backend whose memory the host cannot read: each rank joins its Gloo
// group (real connections on loopback), then, with backend NCCL, the group's device
// communicator (an in-process group over the opaque memory, in NCCL's part).
struct CudaGroupRun {
  std::vector<int> exit_codes;
  std::vector<std::vector<v1::StageChildEvent>> events;
  std::vector<std::shared_ptr<train::testing::DeviceOpCounts>> counts;
  std::vector<GroupMember> device_members;
};

CudaGroupRun RunCudaGroup(const std::vector<std::string>& assignments, bool with_device_connector,
                          const std::function<StageChildOptions(const std::string&)>& options_of) {
  CudaGroupRun run;
  auto store = comm::MakeInMemoryStore();
  std::vector<std::unique_ptr<comm::Communicator>> device_group;
  for (std::unique_ptr<comm::Communicator>& c : comm::MakeInProcessGroup(2, absl::Seconds(60))) {
    run.counts.push_back(std::make_shared<train::testing::DeviceOpCounts>());
    device_group.push_back(std::make_unique<train::testing::OpaqueMemoryCommunicator>(
        std::move(c), run.counts.back()));
  }
  ConnectLog device_log;
  std::vector<std::unique_ptr<FakeParent>> parents;
  for (int rank : {0, 1}) {
    StageChildOptions options = options_of(assignments[rank]);
    options.worker = absl::StrCat("workers/w-", rank);
    options.collective_timeout = absl::Seconds(60);
    options.connect_group = [store](const GroupMember& m) {
      return ConnectGlooGroupOver(m, store);
    };
    if (with_device_connector) {
      // Each rank takes its own communicator (once: a second call would get nullptr and fail).
      options.connect_device_group =
          [&](const GroupMember& m) -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
        absl::MutexLock lock(&device_log.mu);
        device_log.members.push_back(m);
        return std::move(device_group[static_cast<size_t>(m.rank)]);
      };
    }
    options.create_backend =
        [](v1::DeviceKind device) -> absl::StatusOr<std::unique_ptr<kernels::Backend>> {
      EXPECT_EQ(device, v1::DEVICE_KIND_CUDA);
      return std::make_unique<model::OpaqueMemoryBackend>();
    };
    parents.push_back(std::make_unique<FakeParent>(options, Accept));
  }
  for (int rank : {0, 1}) {
    run.exit_codes.push_back(parents[rank]->Wait());
    run.events.push_back(parents[rank]->events());
  }
  absl::MutexLock lock(&device_log.mu);
  run.device_members = device_log.members;
  return run;
}

// Backend NCCL (the coordinator's for CUDA jobs): every training step reduces the gradient and
// gathers the parameters through the device communicator.
TEST_F(StageChildTest, ACudaGroupStepsThroughItsDeviceCommunicator) {
  spec_.mutable_world()->set_device(v1::DEVICE_KIND_CUDA);
  spec_.set_precision(v1::PRECISION_BF16);
  std::vector<std::string> assignments;
  for (int rank : {0, 1}) {
    UseGroup(rank, 2);
    assignments.push_back(WriteAssignment(0, nullptr, absl::StrCat("assignment-", rank, ".json")));
  }
  const CudaGroupRun run =
      RunCudaGroup(assignments, true, [&](const std::string& a) { return Options(a); });
  for (int rank : {0, 1}) {
    EXPECT_EQ(run.exit_codes[rank], kStageChildOk) << "rank " << rank;
    ASSERT_FALSE(run.events[rank].empty());
    EXPECT_TRUE(run.events[rank].back().has_done()) << "rank " << rank;
    // Steps 1-4 of stage 0, each through the device communicator.
    EXPECT_EQ(run.counts[rank]->reduce_scatters.load(), 4) << "rank " << rank;
    EXPECT_EQ(run.counts[rank]->all_gathers.load(), 4) << "rank " << rank;
  }
  ASSERT_EQ(run.device_members.size(), 2u);
  for (const GroupMember& m : run.device_members) {
    EXPECT_EQ(m.world_size, 2);
    EXPECT_EQ(m.rendezvous_prefix, "jobs/stage-test-1/rounds/3/");
    EXPECT_EQ(m.timeout, absl::Seconds(60));
  }
}

// Backend GLOO: the same job trains host-staged, without joining a device communicator; an
// NCCL assignment to a worker that cannot join one fails, not retryable.
TEST_F(StageChildTest, ACudaGroupFollowsItsAssignmentsBackend) {
  spec_.mutable_world()->set_device(v1::DEVICE_KIND_CUDA);
  spec_.set_precision(v1::PRECISION_BF16);
  backend_ = v1::COLLECTIVE_BACKEND_GLOO;
  std::vector<std::string> assignments;
  for (int rank : {0, 1}) {
    UseGroup(rank, 2);
    assignments.push_back(WriteAssignment(0, nullptr, absl::StrCat("gloo-", rank, ".json")));
  }
  const CudaGroupRun gloo =
      RunCudaGroup(assignments, true, [&](const std::string& a) { return Options(a); });
  for (int rank : {0, 1}) {
    EXPECT_EQ(gloo.exit_codes[rank], kStageChildOk) << "rank " << rank;
    EXPECT_EQ(gloo.counts[rank]->reduce_scatters.load(), 0) << "rank " << rank;
  }
  EXPECT_TRUE(gloo.device_members.empty());

  // A fresh run directory: the NCCL group cannot start.
  fs::remove_all(root_ / "run");
  backend_ = v1::COLLECTIVE_BACKEND_NCCL;
  UseGroup(1, 2);
  StageChildOptions options = Options(WriteAssignment(0, nullptr, "nccl-1.json"));
  options.worker = "workers/w-1";
  options.connect_group =
      [](const GroupMember& m) -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
    // A group whose other rank never acts: nothing reaches a collective.
    return std::move(comm::MakeInProcessGroup(2, absl::Seconds(5))[static_cast<size_t>(m.rank)]);
  };
  options.create_backend = [](v1::DeviceKind) -> absl::StatusOr<std::unique_ptr<kernels::Backend>> {
    return std::make_unique<model::OpaqueMemoryBackend>();
  };
  FakeParent parent(options, Accept);
  EXPECT_EQ(parent.Wait(), kStageChildFailed);
  std::optional<v1::StageError> error = ErrorOf(parent.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), "FAILED_PRECONDITION") << error->message();
  EXPECT_THAT(error->message(), HasSubstr("cannot join a device group"));
  EXPECT_FALSE(error->retryable());

  // NCCL on a CPU job is a bad assignment.
  spec_.mutable_world()->set_device(v1::DEVICE_KIND_CPU);
  spec_.set_precision(v1::PRECISION_FP32);
  FakeParent cpu(Options(WriteAssignment(0, nullptr, "nccl-cpu.json")), Accept);
  EXPECT_EQ(cpu.Wait(), kStageChildFailed);
  error = ErrorOf(cpu.events());
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->message(), HasSubstr("needs a world.device cuda job"));
  EXPECT_FALSE(error->retryable());
}

TEST(CancellableStoreTest, GivesUpWhenCancelledAndKeepsTheDeadline) {
  auto store = std::make_shared<EmptyStore>();
  std::atomic<bool> cancelled{false};
  std::shared_ptr<comm::RendezvousStore> s = MakeCancellableStore(
      store, [&] { return cancelled.load(); }, absl::Milliseconds(20));
  // Not cancelled: the deadline holds, and the error is the store's (naming the key).
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> value = s->Get("k", start + absl::Milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(value.status())) << value.status();
  EXPECT_THAT(value.status().message(), HasSubstr("key k"));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_GE(store->gets.load(), 5);
  // Cancelled meanwhile: CANCELLED soon, long before the deadline.
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cancelled = true;
  });
  const absl::Time again = absl::Now();
  value = s->Get("k", again + absl::Seconds(60));
  canceller.join();
  EXPECT_TRUE(absl::IsCancelled(value.status())) << value.status();
  EXPECT_LT(absl::Now() - again, absl::Seconds(5));
  EXPECT_TRUE(absl::IsCancelled(s->Set("k", "v")));
}

}  // namespace
}  // namespace qtrain::worker
