// The daemon against an in-process fake coordinator (a WorkerService that records every call
// and hands out directives), with shell scripts standing in for the training child.
#include "worker/daemon/daemon.h"

#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/rpc_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "qtrain/v1/worker.grpc.pb.h"
#include "worker/daemon/fake_coordinator_test_util.h"
#include "worker/daemon/machine_info.h"
#include "worker/daemon/stage_runner.h"
#include "worker/train/training_backend.h"

namespace qtrain::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Scripts standing in for `train-stage`. Each writes its pid and arguments beside itself.
constexpr char kPrologue[] = R"(
dir=$(dirname "$0")
echo $$ > "$dir/child.pid"
printf '%s\n' "$@" > "$dir/child.args"
wait_ack() { while read -r line; do case "$line" in *checkpoint_ack*) echo "$line" > "$dir/ack"; return;; esac; done; exit 4; }
)";

constexpr char kGoodChild[] = R"(
echo '{"phase":"WORKER_PHASE_LOADING"}'
echo '{"phase":"WORKER_PHASE_TRAINING"}'
echo '{"progress":{"stage":"0","step":"1","loss":2.5}}'
echo '{"phase":"WORKER_PHASE_CHECKPOINTING"}'
echo '{"checkpoint":{"step":"2","stage":"0","directory":"/runs/j/checkpoints/step-000000000002"}}'
wait_ack
echo '{"progress":{"stage":"0","step":"2","loss":2.0}}'
echo '{"done":{"stage":"0","step":"2"}}'
exit 0
)";

// Trains "forever", ignoring SIGTERM: only SIGKILL ends it.
constexpr char kStubbornChild[] = R"(
trap '' TERM
echo '{"phase":"WORKER_PHASE_TRAINING"}'
step=0
while :; do step=$((step+1)); echo "{\"progress\":{\"step\":\"$step\"}}"; sleep 0.1; done
)";

constexpr char kCrashingChild[] = R"(
echo '{"phase":"WORKER_PHASE_TRAINING"}'
sleep 0.2
kill -9 $$
)";

constexpr char kFailingChild[] = R"(
echo '{"phase":"WORKER_PHASE_LOADING"}'
echo '{"error":{"code":"INVALID_ARGUMENT","message":"data manifest changed","retryable":false}}'
exit 1
)";

// A checkpoint every 0.3 s, each waiting for its ack, until step 100.
constexpr char kCheckpointingChild[] = R"(
echo '{"phase":"WORKER_PHASE_TRAINING"}'
step=0
while [ $step -lt 100 ]; do
  step=$((step+1)); sleep 0.3
  echo "{\"checkpoint\":{\"step\":\"$step\",\"stage\":\"0\",\"directory\":\"/d\"}}"
  wait_ack
done
echo '{"done":{"stage":"0","step":"100"}}'
)";

// Two steps and a checkpoint with their timings, then trains until stopped.
constexpr char kTimedChild[] = R"(
echo '{"phase":"WORKER_PHASE_TRAINING"}'
echo '{"progress":{"stage":"0","step":"1","loss":2.5,"step_seconds":0.5,"data_wait_seconds":0.125,"rank_tokens":"100","memory_bytes":"4096"}}'
echo '{"checkpoint":{"step":"1","stage":"0","directory":"/d","write_seconds":1.25}}'
wait_ack
echo '{"progress":{"stage":"0","step":"2","loss":2.0,"step_seconds":0.5,"rank_tokens":"100","eval_loss":2.25}}'
while :; do sleep 0.05; done
)";

v1::Directive AssignDirective(const std::string& job, int64_t round) {
  v1::Directive d;
  v1::Assignment* a = d.mutable_assign();
  a->set_job(job);
  a->set_round(round);
  a->set_rank(0);
  a->set_world_size(1);
  a->set_stage(0);
  a->set_start_step(0);
  a->set_end_step(100);
  a->set_run_directory("/runs/j");
  a->set_checkpoint_directory("/runs/j/checkpoints");
  return d;
}

v1::Directive AbortDirective(const std::string& job, int64_t round) {
  v1::Directive d;
  d.mutable_abort()->set_job(job);
  d.mutable_abort()->set_round(round);
  d.mutable_abort()->set_reason("test abort");
  return d;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool ProcessGone(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = content.rfind(')');
  return paren != std::string::npos && paren + 2 < content.size() && content[paren + 2] == 'Z';
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_ + "/child");
    StartServer("127.0.0.1:0");
  }

  void TearDown() override {
    if (daemon_ != nullptr) {
      daemon_->Stop();
      EXPECT_TRUE(daemon_->Wait().ok());
      daemon_.reset();
    }
    if (server_ != nullptr) server_->Shutdown(absl::Milliseconds(100));
  }

  // `known`: a worker id the new coordinator already knows (its state survived).
  void StartServer(const std::string& listen, const std::string& known = "") {
    fake_ = std::make_unique<FakeCoordinator>();
    if (!known.empty()) fake_->KnowWorker(known);
    absl::StatusOr<std::unique_ptr<RpcServer>> server =
        RpcServer::Start({.listen = listen}, {fake_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->SetServing(true);
    address_ = server_->address();
  }

  void StopServer() {
    server_->Shutdown(absl::Milliseconds(100));
    server_.reset();
  }

  std::string WriteChild(const char* body) {
    const std::string path = root_ + "/child/child.sh";
    std::ofstream(path) << "#!/bin/sh\n" << kPrologue << body;
    return path;
  }

  DaemonOptions Options(const std::string& child) {
    DaemonOptions options;
    options.channel.address = address_;
    options.work_dir = root_ + "/work";
    options.name = "test";
    options.threads = 2;
    options.drain_timeout = absl::Seconds(20);
    options.child_command = {"/bin/sh", child};
    options.version = "test";
    return options;
  }

  void StartDaemon(const DaemonOptions& options) {
    absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Start(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = std::move(*daemon);
  }

  int ChildPid() {
    int pid = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(root_ + "/child/child.pid")),
                           &pid)) {
        return pid;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return 0;
  }

  std::string root_;
  std::string address_;  // of the latest server
  std::unique_ptr<FakeCoordinator> fake_;
  std::unique_ptr<RpcServer> server_;
  std::unique_ptr<WorkerDaemon> daemon_;
};

TEST_F(DaemonTest, RegistersHeartbeatsAndKeepsItsId) {
  StartDaemon(Options(WriteChild(kGoodChild)));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return f.heartbeats_.size() >= 3; }));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.registrations_.size(), 1u);
    const v1::RegisterWorkerRequest& r = f.registrations_[0];
    EXPECT_EQ(r.worker_id(), "");
    EXPECT_EQ(r.hostname(), "test");
    EXPECT_EQ(r.device(), v1::DEVICE_KIND_CPU);
    EXPECT_EQ(r.device_count(), 1);
    EXPECT_EQ(r.version(), "test");
    // No --peer-host: the hostname.
    EXPECT_EQ(r.peer_host(), DescribeMachine().hostname);
    for (const auto& h : f.heartbeats_) {
      EXPECT_EQ(h.worker(), "workers/fake-1");
      EXPECT_EQ(h.phase(), v1::WORKER_PHASE_IDLE);
      EXPECT_FALSE(h.draining());
    }
    // Sequence numbers increase.
    for (size_t i = 1; i < f.heartbeats_.size(); ++i) {
      EXPECT_GT(f.heartbeats_[i].sequence(), f.heartbeats_[i - 1].sequence());
    }
  });
  EXPECT_EQ(ReadFile(root_ + "/work/worker_id"), "fake-1\n");
  EXPECT_EQ(daemon_->worker_name(), "workers/fake-1");

  // One daemon per work directory.
  absl::StatusOr<std::unique_ptr<WorkerDaemon>> second =
      WorkerDaemon::Start(Options(root_ + "/child/child.sh"));
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().ToString(), HasSubstr("in use by qtrain-worker process"));

  // A restarted daemon registers with the id it was given.
  daemon_->Stop();
  ASSERT_TRUE(daemon_->Wait().ok());
  daemon_.reset();
  StartDaemon(Options(root_ + "/child/child.sh"));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return f.registrations_.size() == 2; }));
  fake_->Read([](FakeCoordinator& f) { EXPECT_EQ(f.registrations_[1].worker_id(), "fake-1"); });
}

TEST_F(DaemonTest, RunsAnAssignmentToItsEnd) {
  StartDaemon(Options(WriteChild(kGoodChild)));
  fake_->Send(AssignDirective("jobs/demo-1", 3));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.completions_.empty(); }));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.commits_.size(), 1u);
    const v1::CommitCheckpointRequest& c = f.commits_[0];
    EXPECT_EQ(c.worker(), "workers/fake-1");
    EXPECT_EQ(c.job(), "jobs/demo-1");
    EXPECT_EQ(c.round(), 3);
    EXPECT_EQ(c.step(), 2);
    EXPECT_EQ(c.directory(), "/runs/j/checkpoints/step-000000000002");
    const v1::CompleteAssignmentRequest& done = f.completions_[0];
    EXPECT_EQ(done.job(), "jobs/demo-1");
    EXPECT_EQ(done.round(), 3);
    EXPECT_EQ(done.step(), 2);
    EXPECT_TRUE(f.failures_.empty());
  });
  // Progress was forwarded, with the assignment's job and round.
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) {
    for (const auto& h : f.heartbeats_) {
      if (h.phase() == v1::WORKER_PHASE_TRAINING && h.progress().job() == "jobs/demo-1" &&
          h.progress().round() == 3 && h.progress().step() == 1 && h.progress().loss() == 2.5) {
        return true;
      }
    }
    return false;
  }));
  // Then idle again, without progress.
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) {
    const auto& h = f.heartbeats_.back();
    return h.phase() == v1::WORKER_PHASE_IDLE && !h.has_progress();
  }));
  EXPECT_THAT(ReadFile(root_ + "/child/ack"), HasSubstr("\"ok\":true"));
  const std::string assignment_file = root_ + "/work/assignments/demo-1-r3-rank0.json";
  EXPECT_THAT(ReadFile(assignment_file), HasSubstr("\"job\":\"jobs/demo-1\""));
  const std::string args = ReadFile(root_ + "/child/child.args");
  EXPECT_THAT(args, HasSubstr("--assignment\n" + assignment_file + "\n"));
  EXPECT_THAT(args, HasSubstr("--threads\n2\n"));
  EXPECT_THAT(args, HasSubstr("--parent-timeout-ms\n1500\n"));
}

TEST_F(DaemonTest, AbortKillsTheChildWithinThreeSeconds) {
  StartDaemon(Options(WriteChild(kStubbornChild)));
  fake_->Send(AssignDirective("jobs/a-1", 1));
  const int pid = ChildPid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return f.SawPhase(v1::WORKER_PHASE_TRAINING); }));
  // An abort for another round leaves it alone.
  fake_->Send(AbortDirective("jobs/a-1", 7));
  absl::SleepFor(absl::Milliseconds(400));
  ASSERT_FALSE(ProcessGone(pid));

  fake_->Send(AbortDirective("jobs/a-1", 1));
  const absl::Time start = absl::Now();
  while (!ProcessGone(pid) && absl::Now() - start < absl::Seconds(5)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  // STOPPED for that round, then IDLE; an abort is not a failure to report.
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) {
    bool stopped = false;
    for (const auto& h : f.heartbeats_) {
      if (h.phase() == v1::WORKER_PHASE_STOPPED && h.progress().job() == "jobs/a-1") {
        stopped = true;
      }
      if (stopped && h.phase() == v1::WORKER_PHASE_IDLE) return true;
    }
    return false;
  }));
  fake_->Read([](FakeCoordinator& f) { EXPECT_TRUE(f.failures_.empty()); });
}

TEST_F(DaemonTest, ReportsAChildThatDies) {
  StartDaemon(Options(WriteChild(kCrashingChild)));
  fake_->Send(AssignDirective("jobs/c-1", 2));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.failures_.empty(); }));
  fake_->Read([](FakeCoordinator& f) {
    const v1::ReportFailureRequest& r = f.failures_[0];
    EXPECT_EQ(r.job(), "jobs/c-1");
    EXPECT_EQ(r.round(), 2);
    EXPECT_EQ(r.code(), "INTERNAL");
    EXPECT_TRUE(r.retryable());
    EXPECT_THAT(r.message(), HasSubstr("killed by signal 9"));
  });
}

TEST_F(DaemonTest, ForwardsTheChildsError) {
  StartDaemon(Options(WriteChild(kFailingChild)));
  fake_->Send(AssignDirective("jobs/e-1", 1));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.failures_.empty(); }));
  absl::SleepFor(absl::Milliseconds(300));  // no second report for its exit
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.failures_.size(), 1u);
    EXPECT_EQ(f.failures_[0].code(), "INVALID_ARGUMENT");
    EXPECT_EQ(f.failures_[0].message(), "data manifest changed");
    EXPECT_FALSE(f.failures_[0].retryable());
  });
}

TEST_F(DaemonTest, RefusesAnAssignmentThatCannotRun) {
  StartDaemon(Options(WriteChild(kGoodChild)));
  v1::Directive bad = AssignDirective("jobs/b-1", 1);
  bad.mutable_assign()->set_rank(3);  // of a world of 1
  fake_->Send(bad);
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.failures_.empty(); }));
  fake_->Read([](FakeCoordinator& f) {
    EXPECT_EQ(f.failures_[0].code(), "INVALID_ARGUMENT");
    EXPECT_FALSE(f.failures_[0].retryable());
    EXPECT_THAT(f.failures_[0].message(), HasSubstr("rank: 3 is not in [0, 1)"));
  });
  EXPECT_FALSE(std::filesystem::exists(root_ + "/child/child.pid"));
}

TEST_F(DaemonTest, StopsTheChildWhenItsRoundIsOver) {
  fake_->FailCommits(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "round 1 of jobs/s-1 is over; the current round is 2"));
  StartDaemon(Options(WriteChild(kCheckpointingChild)));
  fake_->Send(AssignDirective("jobs/s-1", 1));
  const int pid = ChildPid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.commits_.empty(); }));
  const absl::Time start = absl::Now();
  while (!ProcessGone(pid) && absl::Now() - start < absl::Seconds(5)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(ProcessGone(pid));
  ASSERT_TRUE(fake_->WaitFor(
      [](FakeCoordinator& f) { return f.heartbeats_.back().phase() == v1::WORKER_PHASE_IDLE; }));
  fake_->Read([](FakeCoordinator& f) { EXPECT_TRUE(f.failures_.empty()); });
}

TEST_F(DaemonTest, RefusedCheckpointIsAnsweredNotOk) {
  fake_->FailCommits(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "file model.safetensors: wrong size"));
  StartDaemon(Options(WriteChild(kCheckpointingChild)));
  fake_->Send(AssignDirective("jobs/r-1", 1));
  const std::string ack = root_ + "/child/ack";
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (ReadFile(ack).empty() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_THAT(ReadFile(ack), HasSubstr("wrong size"));
  EXPECT_THAT(ReadFile(ack), HasSubstr("\"ok\":false"));
}

TEST_F(DaemonTest, ReconnectsWhenTheCoordinatorRestarts) {
  StartDaemon(Options(WriteChild(kStubbornChild)));
  fake_->Send(AssignDirective("jobs/k-1", 1));
  const int pid = ChildPid();
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return f.SawPhase(v1::WORKER_PHASE_TRAINING); }));
  const std::string address = server_->address();
  StopServer();
  absl::SleepFor(absl::Seconds(1));
  // The new coordinator knows the worker (its state survived): no re-registration.
  StartServer(address, "fake-1");
  const absl::Time restarted = absl::Now();
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }, absl::Seconds(10)));
  // Back within the reconnect backoff's ceiling, well inside a lease.
  EXPECT_LT(absl::Now() - restarted, absl::Milliseconds(2500));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return f.heartbeats_.size() >= 3; },
                             absl::Seconds(10)));
  fake_->Read([](FakeCoordinator& f) {
    EXPECT_TRUE(f.registrations_.empty());
    const auto& h = f.heartbeats_.back();
    EXPECT_EQ(h.worker(), "workers/fake-1");
    EXPECT_EQ(h.progress().job(), "jobs/k-1");
  });
  // The child kept running through it.
  EXPECT_FALSE(ProcessGone(pid));
}

TEST_F(DaemonTest, RetriesACommitUntilTheCoordinatorIsBack) {
  StartDaemon(Options(WriteChild(kCheckpointingChild)));
  fake_->Send(AssignDirective("jobs/m-1", 1));
  const int pid = ChildPid();
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.commits_.empty(); }));
  const std::string address = server_->address();
  StopServer();
  absl::SleepFor(absl::Seconds(2));  // the child's next checkpoint waits meanwhile
  StartServer(address, "fake-1");
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return f.commits_.size() >= 2; }, absl::Seconds(10)));
  fake_->Read([](FakeCoordinator& f) {
    EXPECT_TRUE(f.registrations_.empty());
    EXPECT_TRUE(f.failures_.empty());
    EXPECT_EQ(f.commits_[1].step(), f.commits_[0].step() + 1);
  });
  EXPECT_FALSE(ProcessGone(pid));
}

TEST_F(DaemonTest, RegistersAgainWhenTheCoordinatorForgotIt) {
  StartDaemon(Options(WriteChild(kGoodChild)));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }));
  const std::string address = server_->address();
  StopServer();
  StartServer(address);  // a coordinator with no state: NOT_FOUND for the worker
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }, absl::Seconds(10)));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.registrations_.size(), 1u);
    EXPECT_EQ(f.registrations_[0].worker_id(), "fake-1");
  });
}

TEST_F(DaemonTest, DrainWhenIdleExitsAtOnce) {
  StartDaemon(Options(WriteChild(kGoodChild)));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }));
  const absl::Time start = absl::Now();
  daemon_->Drain(/*exit_when_drained=*/true);
  ASSERT_TRUE(daemon_->Wait().ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(daemon_->done());
}

TEST_F(DaemonTest, DrainStopsAtTheNextCheckpoint) {
  StartDaemon(Options(WriteChild(kCheckpointingChild)));
  fake_->Send(AssignDirective("jobs/d-1", 1));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.commits_.empty(); }));
  const int pid = ChildPid();
  daemon_->Drain(/*exit_when_drained=*/true);
  ASSERT_TRUE(daemon_->Wait().ok());
  EXPECT_TRUE(ProcessGone(pid));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.failures_.size(), 1u);
    const v1::ReportFailureRequest& r = f.failures_[0];
    EXPECT_TRUE(r.drained());
    EXPECT_TRUE(r.retryable());
    EXPECT_THAT(r.message(), HasSubstr("draining"));
    // It stopped right after a committed checkpoint, and said it was draining.
    EXPECT_THAT(r.message(), HasSubstr(absl::StrCat("step ", f.commits_.back().step())));
    bool draining = false;
    for (const auto& h : f.heartbeats_) draining = draining || h.draining();
    EXPECT_TRUE(draining);
  });
}

TEST_F(DaemonTest, DrainTimeoutStopsTheChild) {
  DaemonOptions options = Options(WriteChild(kStubbornChild));
  options.drain_timeout = absl::Milliseconds(500);
  StartDaemon(options);
  fake_->Send(AssignDirective("jobs/t-1", 1));
  const int pid = ChildPid();
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return f.SawPhase(v1::WORKER_PHASE_TRAINING); }));
  const absl::Time start = absl::Now();
  daemon_->Drain(/*exit_when_drained=*/true);
  ASSERT_TRUE(daemon_->Wait().ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(ProcessGone(pid));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.failures_.size(), 1u);
    EXPECT_FALSE(f.failures_[0].drained());
    EXPECT_THAT(f.failures_[0].message(), HasSubstr("drain timeout"));
  });
}

TEST_F(DaemonTest, StopAbortsTheChild) {
  StartDaemon(Options(WriteChild(kStubbornChild)));
  fake_->Send(AssignDirective("jobs/x-1", 1));
  const int pid = ChildPid();
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return f.SawPhase(v1::WORKER_PHASE_TRAINING); }));
  const absl::Time start = absl::Now();
  daemon_->Stop();
  ASSERT_TRUE(daemon_->Wait().ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(ProcessGone(pid));
}

TEST_F(DaemonTest, WaitsForACoordinatorThatIsNotUpYet) {
  const std::string address = server_->address();
  StopServer();
  StartDaemon(Options(WriteChild(kGoodChild)));
  absl::SleepFor(absl::Milliseconds(700));
  StartServer(address);
  ASSERT_TRUE(
      fake_->WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }, absl::Seconds(10)));
}

TEST_F(DaemonTest, RefusesCudaWithoutAGpu) {
  if (train::CheckTrainingDevice(v1::DEVICE_KIND_CUDA).ok()) {
    GTEST_SKIP() << "this machine has a GPU: a CUDA worker may start";
  }
  DaemonOptions options = Options(WriteChild(kGoodChild));
  options.device = v1::DEVICE_KIND_CUDA;
  absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Start(options);
  ASSERT_FALSE(daemon.ok());
  EXPECT_EQ(daemon.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(daemon.status().ToString(),
              HasSubstr(train::BuiltWithCuda() ? "--device cuda: the CUDA driver sees no GPU"
                                               : "--device cuda: this build has no CUDA backend"));
}

TEST_F(DaemonTest, GivesTheChildItsGroupFlags) {
  const std::string token = root_ + "/token";
  std::ofstream(token) << "secret\n";
  DaemonOptions options = Options(WriteChild(kGoodChild));
  options.channel.token_file = token;
  options.peer_host = "10.1.2.3";
  options.collective_timeout = absl::Seconds(7);
  StartDaemon(options);
  fake_->Send(AssignDirective("jobs/g-1", 1));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.completions_.empty(); }));
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_FALSE(f.registrations_.empty());
    EXPECT_EQ(f.registrations_[0].peer_host(), "10.1.2.3");
  });
  const std::string args = ReadFile(root_ + "/child/child.args");
  EXPECT_THAT(args, HasSubstr("--coordinator\n" + address_ + "\n"));
  EXPECT_THAT(args, HasSubstr("--cluster-token-file\n" + token + "\n"));
  EXPECT_THAT(args, HasSubstr("--worker\nworkers/fake-1\n"));
  EXPECT_THAT(args, HasSubstr("--peer-host\n10.1.2.3\n"));
  EXPECT_THAT(args, HasSubstr("--collective-timeout-ms\n7000\n"));
  // No TLS configured: no TLS flags (the child would refuse empty file names).
  EXPECT_THAT(args, Not(HasSubstr("--tls")));
}

TEST_F(DaemonTest, RefusesBadGroupFlags) {
  struct Case {
    std::string peer_host;
    absl::Duration timeout;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"bad host", absl::Seconds(1), "--peer-host: 'bad host' is not a host name"},
      {"-x", absl::Seconds(1), "--peer-host"},
      {std::string(300, 'a'), absl::Seconds(1), "--peer-host: is 300 bytes long"},
      {"", absl::ZeroDuration(), "--collective-timeout-seconds: must be positive"},
      {"", -absl::Seconds(3), "--collective-timeout-seconds: must be positive"},
      {"", absl::Hours(25), "--collective-timeout-seconds: 25h is more than 24h"},
  };
  for (const Case& c : cases) {
    DaemonOptions options = Options(WriteChild(kGoodChild));
    options.peer_host = c.peer_host;
    options.collective_timeout = c.timeout;
    absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Start(options);
    ASSERT_FALSE(daemon.ok()) << c.needle;
    EXPECT_TRUE(absl::IsInvalidArgument(daemon.status())) << daemon.status();
    EXPECT_THAT(daemon.status().message(), HasSubstr(c.needle));
  }
}

// The value of series `name` with `labels` in `registry` (nullopt when there is none).
std::optional<double> MetricValue(prometheus::Registry& registry, const std::string& name,
                                  const std::map<std::string, std::string>& labels = {}) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    for (const prometheus::ClientMetric& m : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& l : m.label) have[l.name] = l.value;
      if (have != labels) continue;
      if (family.name == name) {
        return family.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
      }
      if (family.name + "_count" == name) return m.histogram.sample_count;
    }
  }
  return std::nullopt;
}

// Polls until series `name` has `value` (nullopt: until it is gone).
bool WaitForMetric(prometheus::Registry& registry, const std::string& name,
                   const std::map<std::string, std::string>& labels, std::optional<double> value) {
  for (const absl::Time end = absl::Now() + absl::Seconds(20); absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(10))) {
    if (MetricValue(registry, name, labels) == value) return true;
  }
  return false;
}

TEST_F(DaemonTest, MetricsFollowTheAssignmentAndTheStream) {
  auto registry = std::make_shared<prometheus::Registry>();
  DaemonOptions options = Options(WriteChild(kTimedChild));
  options.metrics = registry;
  options.peak_flops = 1e9;
  EXPECT_EQ(MetricValue(*registry, "qtrain_worker_up"), std::nullopt);
  StartDaemon(options);
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_worker_up", {}, 1));

  v1::Directive assign = AssignDirective("jobs/demo-1", 3);
  assign.mutable_assign()->mutable_spec()->add_curriculum()->set_name("warmup");
  fake_->Send(assign);
  const std::map<std::string, std::string> labels = {
      {"job_id", "demo-1"}, {"stage", "warmup"}, {"rank", "0"}};
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_step", labels, 2));
  EXPECT_EQ(MetricValue(*registry, "qtrain_tokens_total", labels), 200);
  EXPECT_EQ(MetricValue(*registry, "qtrain_step_seconds_count", labels), 2);
  EXPECT_EQ(MetricValue(*registry, "qtrain_data_wait_seconds_total", labels), 0.125);
  EXPECT_EQ(MetricValue(*registry, "qtrain_compute_seconds_total", labels), 0.875);
  EXPECT_EQ(MetricValue(*registry, "qtrain_checkpoint_seconds_count", labels), 1);
  EXPECT_EQ(MetricValue(*registry, "qtrain_eval_loss", labels), 2.25);
  EXPECT_EQ(MetricValue(*registry, "qtrain_train_loss", labels), 2.0);
  // No FLOPs per token reported: zero utilization, but the series is there (a peak is known).
  EXPECT_EQ(MetricValue(*registry, "qtrain_model_flops_utilization", labels), 0);
  fake_->Read([](FakeCoordinator& f) {
    ASSERT_EQ(f.commits_.size(), 1u);
    EXPECT_EQ(f.commits_[0].write_seconds(), 1.25);
  });

  // Aborted: the child goes and its series with it.
  fake_->Send(AbortDirective("jobs/demo-1", 3));
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_step", labels, std::nullopt));
  for (const prometheus::MetricFamily& family : registry->Collect()) {
    if (family.name != "qtrain_worker_up") {
      EXPECT_TRUE(family.metric.empty()) << family.name;
    }
  }
  EXPECT_EQ(MetricValue(*registry, "qtrain_worker_up"), 1);

  // The coordinator gone: down; back: up again.
  const std::string address = address_;
  StopServer();
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_worker_up", {}, 0));
  StartServer(address, "fake-1");
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_worker_up", {}, 1));
  daemon_->Stop();
  ASSERT_TRUE(daemon_->Wait().ok());
  EXPECT_EQ(MetricValue(*registry, "qtrain_worker_up"), 0);
}

// A stage's last step, then the same progress with its eval tasks' results.
constexpr char kEvaluatingChild[] = R"(
echo '{"phase":"WORKER_PHASE_TRAINING"}'
echo '{"progress":{"stage":"0","step":"4","loss":2.0,"step_seconds":0.5,"rank_tokens":"100"}}'
echo '{"phase":"WORKER_PHASE_EVALUATING"}'
echo '{"progress":{"stage":"0","step":"4","loss":2.0,"step_seconds":0.5,"rank_tokens":"100","eval_tasks":[{"stage":"0","step":"4","name":"arc","task":"multiple-choice","metrics":{"acc":0.5,"count":20}}]}}'
echo '{"phase":"WORKER_PHASE_TRAINING"}'
while :; do sleep 0.05; done
)";

TEST_F(DaemonTest, ForwardsEvalTaskResultsOnTheHeartbeat) {
  auto registry = std::make_shared<prometheus::Registry>();
  DaemonOptions options = Options(WriteChild(kEvaluatingChild));
  options.metrics = registry;
  StartDaemon(options);
  v1::Directive assign = AssignDirective("jobs/demo-1", 3);
  assign.mutable_assign()->mutable_spec()->add_curriculum()->set_name("short");
  fake_->Send(assign);
  const auto carries_results = [](const v1::HeartbeatRequest& h) {
    return h.progress().job() == "jobs/demo-1" && h.progress().round() == 3 &&
           h.progress().eval_tasks_size() == 1 && h.progress().eval_tasks(0).name() == "arc" &&
           h.progress().eval_tasks(0).metrics().at("acc") == 0.5;
  };
  ASSERT_TRUE(fake_->WaitFor([&](FakeCoordinator& f) {
    return std::any_of(f.heartbeats_.begin(), f.heartbeats_.end(), carries_results);
  }));
  // The next heartbeats repeat them (the coordinator keeps one copy) until the child moves on.
  size_t seen = 0;
  fake_->Read([&](FakeCoordinator& f) { seen = f.heartbeats_.size(); });
  ASSERT_TRUE(fake_->WaitFor([&](FakeCoordinator& f) {
    return f.heartbeats_.size() > seen && carries_results(f.heartbeats_.back());
  }));
  const std::map<std::string, std::string> labels = {
      {"job_id", "demo-1"}, {"stage", "short"}, {"task", "arc"}, {"metric", "acc"}};
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_eval_metric", labels, 0.5));
  // The step was counted once, not again with the results.
  EXPECT_EQ(MetricValue(*registry, "qtrain_tokens_total",
                        {{"job_id", "demo-1"}, {"stage", "short"}, {"rank", "0"}}),
            100);
  fake_->Send(AbortDirective("jobs/demo-1", 3));
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_eval_metric", labels, std::nullopt));
}

TEST_F(DaemonTest, SeriesOfAChildThatDiesGo) {
  auto registry = std::make_shared<prometheus::Registry>();
  DaemonOptions options = Options(WriteChild(R"(
echo '{"progress":{"stage":"0","step":"1","step_seconds":0.5,"rank_tokens":"100"}}'
sleep 0.3
kill -9 $$
)"));
  options.metrics = registry;
  StartDaemon(options);
  fake_->Send(AssignDirective("jobs/demo-1", 1));
  const std::map<std::string, std::string> labels = {
      {"job_id", "demo-1"}, {"stage", "0"}, {"rank", "0"}};
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_step", labels, 1));
  // No peak given, none known for a CPU: no utilization.
  EXPECT_EQ(MetricValue(*registry, "qtrain_model_flops_utilization", labels), std::nullopt);
  ASSERT_TRUE(WaitForMetric(*registry, "qtrain_step", labels, std::nullopt));
  ASSERT_TRUE(fake_->WaitFor([](FakeCoordinator& f) { return !f.failures_.empty(); }));
}

TEST_F(DaemonTest, RefusesABadPeak) {
  for (double peak : {0.0, -1.0, std::numeric_limits<double>::infinity(),
                      std::numeric_limits<double>::quiet_NaN()}) {
    DaemonOptions options = Options(WriteChild(kGoodChild));
    options.peak_flops = peak;
    absl::StatusOr<std::unique_ptr<WorkerDaemon>> daemon = WorkerDaemon::Start(options);
    ASSERT_FALSE(daemon.ok()) << peak;
    EXPECT_TRUE(absl::IsInvalidArgument(daemon.status())) << daemon.status();
    EXPECT_THAT(daemon.status().message(), HasSubstr("--peak-flops"));
  }
}

TEST(StageChildArgvTest, PassesTheConnectionItHasAndNothingEmpty) {
  StageRunnerOptions options;
  options.command = {"/bin/worker", "train-stage"};
  options.threads = 3;
  options.parent_timeout = absl::Milliseconds(1500);
  options.coordinator.address = "coord:7070";
  options.coordinator.tls_ca = "/ca.pem";
  options.coordinator.tls_cert = "/cert.pem";
  options.coordinator.tls_key = "/key.pem";
  options.coordinator.tls_server_name = "coord.example";
  options.worker = "workers/w-1";
  options.peer_host = "192.168.1.5";
  options.collective_timeout = absl::Seconds(2);
  EXPECT_THAT(StageChildArgv("/a.json", options),
              ::testing::ElementsAre(
                  "/bin/worker", "train-stage", "--assignment", "/a.json", "--threads", "3",
                  "--parent-timeout-ms", "1500", "--coordinator", "coord:7070", "--tls-ca",
                  "/ca.pem", "--tls-cert", "/cert.pem", "--tls-key", "/key.pem",
                  "--tls-server-name", "coord.example", "--worker", "workers/w-1", "--peer-host",
                  "192.168.1.5", "--collective-timeout-ms", "2000"));
  StageRunnerOptions bare;
  bare.command = {"/bin/worker"};
  EXPECT_THAT(
      StageChildArgv("/a.json", bare),
      ::testing::ElementsAre("/bin/worker", "--assignment", "/a.json", "--parent-timeout-ms",
                             "5000", "--collective-timeout-ms", "300000"));
}

}  // namespace
}  // namespace qtrain::worker
