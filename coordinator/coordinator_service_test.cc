// The coordinator over gRPC: real servers on ephemeral ports, generated stubs as clients.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_test_util.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "qtrain/v1/jobs.grpc.pb.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain::coordinator {
namespace {

using ::qtrain::coordinator::testing::TestSpec;
using ::testing::HasSubstr;

DataPlanner FakePlanner() {
  return [](const v1::JobSpec& spec, int stage, int64_t, int64_t, int,
            int) -> absl::StatusOr<v1::DataAssignment> {
    v1::DataAssignment data;
    data.set_seq_len(spec.curriculum(stage).seq_len());
    return data;
  };
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = (std::filesystem::path(::testing::TempDir()) / ("svc_" + std::string(info->name())))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }

  CoordinatorServerOptions Options() {
    CoordinatorServerOptions options;
    options.state_dir = dir_ + "/state";
    options.run_root = dir_ + "/runs";
    options.rpc.listen = "127.0.0.1:0";
    options.plan_data = FakePlanner();
    return options;
  }

  void Start(CoordinatorServerOptions options) {
    auto server = CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
  }
  void Start() { Start(Options()); }

  static std::unique_ptr<grpc::ClientContext> Context(const std::string& token = "") {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }

  std::string Create(const std::string& request_id) {
    v1::CreateJobRequest request;
    *request.mutable_spec() = TestSpec();
    request.set_request_id(request_id);
    v1::Job job;
    grpc::Status status = jobs_->CreateJob(Context().get(), request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return job.name();
  }

  std::string WriteFile(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << content;
    return path;
  }

  std::string dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

TEST_F(ServiceTest, InvalidSpecListsEveryProblemAndStoresNothing) {
  Start();
  v1::CreateJobRequest request;
  *request.mutable_spec() = TestSpec();
  request.mutable_spec()->clear_curriculum();
  request.mutable_spec()->mutable_optimizer()->set_lr(-1);
  v1::Job job;
  grpc::Status status = jobs_->CreateJob(Context().get(), request, &job);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("request_id"));
  EXPECT_THAT(status.error_message(), HasSubstr("spec.curriculum"));
  EXPECT_THAT(status.error_message(), HasSubstr("spec.optimizer.lr"));
  v1::ListJobsResponse list;
  ASSERT_TRUE(jobs_->ListJobs(Context().get(), v1::ListJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 0);
}

TEST_F(ServiceTest, UnknownAndMalformedNames) {
  Start();
  v1::GetJobRequest get;
  get.set_name("jobs/none-1");
  v1::Job job;
  EXPECT_EQ(jobs_->GetJob(Context().get(), get, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  get.set_name("none");
  EXPECT_EQ(jobs_->GetJob(Context().get(), get, &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::HeartbeatRequest beat;
  beat.set_worker("workers/ghost-1");
  auto context = Context();
  auto stream = workers_->Heartbeat(context.get());
  ASSERT_TRUE(stream->Write(beat));
  v1::HeartbeatResponse response;
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, OversizedRequestIsResourceExhausted) {
  CoordinatorServerOptions options = Options();
  options.rpc.max_receive_message_bytes = 64 << 10;
  Start(options);
  v1::CreateJobRequest request;
  *request.mutable_spec() = TestSpec();
  request.set_request_id("big");
  (*request.mutable_spec()->mutable_labels())["blob"] = std::string(100 << 10, 'x');
  v1::Job job;
  EXPECT_EQ(jobs_->CreateJob(Context().get(), request, &job).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ServiceTest, AssignmentOverTheHeartbeatStream) {
  Start();
  const std::string job = Create("r1");
  v1::RegisterWorkerRequest reg;
  reg.set_hostname("Host_A.example");
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers_->RegisterWorker(Context().get(), reg, &registered).ok());
  EXPECT_EQ(registered.worker().name(), "workers/host-a-example-1");
  EXPECT_EQ(registered.heartbeat_interval_ms(), 1000);
  auto context = Context();
  auto stream = workers_->Heartbeat(context.get());
  v1::HeartbeatRequest beat;
  beat.set_worker(registered.worker().name());
  beat.set_phase(v1::WORKER_PHASE_IDLE);
  v1::Assignment assignment;
  for (int i = 0; i < 50 && !assignment.has_spec(); ++i) {
    beat.set_sequence(i + 1);
    ASSERT_TRUE(stream->Write(beat));
    v1::HeartbeatResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_TRUE(response.has_lease_expire_time());
    if (response.directive().has_assign()) assignment = response.directive().assign();
    if (!assignment.has_spec()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(assignment.job(), job);
  EXPECT_EQ(assignment.round(), 1);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  // Rendezvous: a key that never comes ends with the RPC's deadline.
  v1::GetKeyRequest get;
  get.set_worker(registered.worker().name());
  get.set_job(job);
  get.set_round(1);
  get.set_key("never");
  grpc::ClientContext short_context;
  short_context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  v1::GetKeyResponse value;
  EXPECT_EQ(workers_->GetKey(&short_context, get, &value).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  v1::PutKeyRequest put;
  put.set_worker(registered.worker().name());
  put.set_job(job);
  put.set_round(1);
  put.set_key("k");
  put.set_value("v");
  v1::PutKeyResponse put_response;
  ASSERT_TRUE(workers_->PutKey(Context().get(), put, &put_response).ok());
  get.set_key("k");
  ASSERT_TRUE(workers_->GetKey(Context().get(), get, &value).ok());
  EXPECT_EQ(value.value(), "v");
  put.set_round(7);
  EXPECT_EQ(workers_->PutKey(Context().get(), put, &put_response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// Reads events until the stream ends; returns their sequences.
std::vector<int64_t> ReadAll(grpc::ClientReader<v1::JobEvent>& reader, grpc::Status* status) {
  std::vector<int64_t> sequences;
  v1::JobEvent event;
  while (reader.Read(&event)) sequences.push_back(event.sequence());
  *status = reader.Finish();
  return sequences;
}

TEST_F(ServiceTest, WatchReconnectsWithAfterSequenceAndMissesNothing) {
  Start();
  const std::string job = Create("w1");
  v1::RegisterWorkerRequest reg;
  reg.set_hostname("w");
  v1::RegisterWorkerResponse registered;
  ASSERT_TRUE(workers_->RegisterWorker(Context().get(), reg, &registered).ok());
  // QUEUED, SCHEDULING, StageStarted so far.
  v1::WatchJobRequest watch;
  watch.set_name(job);
  int64_t last = 0;
  {
    auto context = Context();
    auto reader = jobs_->WatchJob(context.get(), watch);
    v1::JobEvent event;
    ASSERT_TRUE(reader->Read(&event));
    EXPECT_EQ(event.sequence(), 1);
    EXPECT_EQ(event.state_changed().to(), v1::JOB_STATE_QUEUED);
    ASSERT_TRUE(reader->Read(&event));
    last = event.sequence();
    context->TryCancel();  // the stream breaks
    reader->Finish().IgnoreError();
  }
  // A live watcher sees the cancel arrive while it waits.
  watch.set_after_sequence(last);
  auto live_context = Context();
  auto live = jobs_->WatchJob(live_context.get(), watch);
  v1::JobEvent event;
  ASSERT_TRUE(live->Read(&event));
  EXPECT_EQ(event.sequence(), last + 1);
  v1::CancelJobRequest cancel;
  cancel.set_name(job);
  v1::Job cancelled;
  ASSERT_TRUE(jobs_->CancelJob(Context().get(), cancel, &cancelled).ok());
  grpc::Status status;
  std::vector<int64_t> rest = ReadAll(*live, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(rest.empty());
  EXPECT_EQ(rest.front(), last + 2);
  for (size_t i = 1; i < rest.size(); ++i) EXPECT_EQ(rest[i], rest[i - 1] + 1);
  // Reconnecting after the end replays the tail and ends.
  watch.set_after_sequence(last);
  auto again_context = Context();
  auto again = jobs_->WatchJob(again_context.get(), watch);
  std::vector<int64_t> replay = ReadAll(*again, &status);
  EXPECT_TRUE(status.ok());
  ASSERT_EQ(replay.size(), rest.size() + 1);
  EXPECT_EQ(replay.front(), last + 1);
  EXPECT_EQ(replay.back(), rest.back());
  watch.set_name("jobs/missing-3");
  auto missing_context = Context();
  auto missing = jobs_->WatchJob(missing_context.get(), watch);
  ReadAll(*missing, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, TokensOnANonLoopbackListener) {
  CoordinatorServerOptions options = Options();
  options.rpc.listen = "0.0.0.0:0";
  // Refused without tokens.
  auto refused = CoordinatorServer::Start(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  options.rpc.security.auth_token_file = WriteFile("user.token", "user-secret\n");
  options.rpc.security.cluster_token_file = WriteFile("cluster.token", "cluster-secret\n");
  auto server = CoordinatorServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string port = (*server)->address().substr((*server)->address().rfind(':') + 1);
  auto channel = grpc::CreateChannel("127.0.0.1:" + port, grpc::InsecureChannelCredentials());
  auto jobs = v1::JobService::NewStub(channel);
  auto workers = v1::WorkerService::NewStub(channel);
  v1::ListJobsResponse list;
  EXPECT_EQ(jobs->ListJobs(Context().get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(jobs->ListJobs(Context("wrong").get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(
      jobs->ListJobs(Context("cluster-secret").get(), v1::ListJobsRequest(), &list).error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(jobs->ListJobs(Context("user-secret").get(), v1::ListJobsRequest(), &list).ok());
  v1::RegisterWorkerRequest reg;
  reg.set_hostname("w");
  v1::RegisterWorkerResponse registered;
  EXPECT_EQ(workers->RegisterWorker(Context("user-secret").get(), reg, &registered).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(workers->RegisterWorker(Context("cluster-secret").get(), reg, &registered).ok());
  v1::WatchJobRequest watch;
  watch.set_name("jobs/x-1");
  auto watch_context = Context();
  auto reader = jobs->WatchJob(watch_context.get(), watch);
  grpc::Status status;
  ReadAll(*reader, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ServiceTest, OneCoordinatorPerStateDir) {
  Start();
  CoordinatorServerOptions options = Options();
  auto second = CoordinatorServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("process ", getpid())));
}

TEST_F(ServiceTest, JobsSurviveARestart) {
  Start();
  const std::string job = Create("same");
  server_.reset();
  Start();
  EXPECT_EQ(Create("same"), job);
  v1::GetJobRequest get;
  get.set_name(job);
  v1::Job got;
  ASSERT_TRUE(jobs_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.state(), v1::JOB_STATE_QUEUED);
}

}  // namespace
}  // namespace qtrain::coordinator

namespace qtrain::coordinator {
namespace {

TEST_F(ServiceTest, ManyWatchersEachSeeEveryEventOnceInOrder) {
  Start();
  const std::string job = Create("many");
  Coordinator& core = *server_->coordinator();
  v1::RegisterWorkerRequest reg;
  reg.set_hostname("w");
  auto registered = core.RegisterWorker(reg);
  ASSERT_TRUE(registered.ok());
  const std::string worker = registered->worker().name();
  v1::HeartbeatRequest beat;
  beat.set_worker(worker);
  v1::Assignment assignment;
  for (int i = 0; i < 10 && !assignment.has_spec(); ++i) {
    auto r = core.Heartbeat(beat);
    ASSERT_TRUE(r.ok());
    if (r->directive().has_assign()) assignment = r->directive().assign();
  }
  ASSERT_TRUE(assignment.has_spec());
  constexpr int kWatchers = 12;
  std::vector<std::vector<int64_t>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] {
      v1::WatchJobRequest watch;
      watch.set_name(job);
      watch.set_include_step_metrics(true);
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
      auto reader = jobs_->WatchJob(&context, watch);
      seen[i] = ReadAll(*reader, &statuses[i]);
    });
  }
  // Steps (one StepMetrics event each) while the watchers replay and follow.
  beat.set_phase(v1::WORKER_PHASE_TRAINING);
  for (int step = 1; step <= 200; ++step) {
    *beat.mutable_progress() = testing::Harness::Progress(assignment, step);
    ASSERT_TRUE(core.Heartbeat(beat).ok());
  }
  v1::CancelJobRequest cancel;
  cancel.set_name(job);
  ASSERT_TRUE(core.CancelJob(cancel).ok());
  beat.set_phase(v1::WORKER_PHASE_STOPPED);
  ASSERT_TRUE(core.Heartbeat(beat).ok());
  for (auto& t : threads) t.join();
  auto events = core.ReadEvents(job, 0, 100000, true);
  ASSERT_TRUE(events.ok());
  ASSERT_TRUE(events->ended);
  const int64_t last = events->events.back().sequence();
  EXPECT_GT(last, 200);
  for (int i = 0; i < kWatchers; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    ASSERT_EQ(static_cast<int64_t>(seen[i].size()), last) << "watcher " << i;
    for (int64_t k = 0; k < last; ++k) ASSERT_EQ(seen[i][k], k + 1) << "watcher " << i;
  }
}

}  // namespace
}  // namespace qtrain::coordinator
