// The coordinator rendezvous store against a real coordinator server on an ephemeral port: a
// worker registered and assigned a job's round, as the daemon would be.
#include "worker/comm/coordinator_store.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
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
#include "worker/comm/gloo_communicator.h"

namespace qtrain::comm {
namespace {

using ::testing::HasSubstr;

class CoordinatorStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            absl::StrCat("comm_coordinator_store_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    coordinator::CoordinatorServerOptions options;
    options.state_dir = dir_ + "/state";
    options.run_root = dir_ + "/runs";
    options.rpc.listen = "127.0.0.1:0";
    options.settle = absl::ZeroDuration();
    options.plan_data = [](const v1::JobSpec& spec, int stage, int64_t, int64_t, int,
                           int) -> absl::StatusOr<v1::DataAssignment> {
      v1::DataAssignment data;
      data.set_seq_len(spec.curriculum(stage).seq_len());
      return data;
    };
    auto server = coordinator::CoordinatorServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    jobs_ = v1::JobService::NewStub(channel);
    workers_ = v1::WorkerService::NewStub(channel);
  }

  static std::unique_ptr<grpc::ClientContext> Context() {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  }

  // Submits a job and registers a worker that heartbeats until the job's round 1 is assigned
  // to it.
  void AssignRound() {
    v1::CreateJobRequest create;
    *create.mutable_spec() = coordinator::testing::TestSpec();
    create.set_request_id("store");
    v1::Job job;
    ASSERT_TRUE(jobs_->CreateJob(Context().get(), create, &job).ok());
    job_ = job.name();
    v1::RegisterWorkerRequest reg;
    reg.set_hostname("store-test");
    v1::RegisterWorkerResponse registered;
    ASSERT_TRUE(workers_->RegisterWorker(Context().get(), reg, &registered).ok());
    worker_ = registered.worker().name();
    auto context = Context();
    auto stream = workers_->Heartbeat(context.get());
    v1::HeartbeatRequest beat;
    beat.set_worker(worker_);
    beat.set_phase(v1::WORKER_PHASE_IDLE);
    v1::Assignment assignment;
    for (int i = 0; i < 100 && !assignment.has_spec(); ++i) {
      beat.set_sequence(i + 1);
      ASSERT_TRUE(stream->Write(beat));
      v1::HeartbeatResponse response;
      ASSERT_TRUE(stream->Read(&response));
      if (response.directive().has_assign()) assignment = response.directive().assign();
      if (!assignment.has_spec()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(assignment.job(), job_);
    round_ = assignment.round();
    prefix_ = assignment.rendezvous_prefix();
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }

  CoordinatorStoreOptions StoreOptions(int64_t round) const {
    CoordinatorStoreOptions options;
    options.channel.address = server_->address();
    options.worker = worker_;
    options.job = job_;
    options.round = round;
    return options;
  }

  std::string dir_;
  std::unique_ptr<coordinator::CoordinatorServer> server_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
  std::string job_, worker_, prefix_;
  int64_t round_ = 0;
};

TEST_F(CoordinatorStoreTest, GetBlocksUntilSetAndTimesOutNamingTheKey) {
  ASSERT_NO_FATAL_FAILURE(AssignRound());
  auto reader = MakeCoordinatorStore(StoreOptions(round_));
  auto writer = MakeCoordinatorStore(StoreOptions(round_));
  ASSERT_TRUE(reader.ok() && writer.ok()) << reader.status() << writer.status();
  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(200));
    EXPECT_TRUE((*writer)->Set("gloo/0", "address zero").ok());
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> got = (*reader)->Get("gloo/0", start + absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "address zero");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));

  const absl::Time before = absl::Now();
  got = (*reader)->Get("never", before + absl::Milliseconds(300));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr("'never'"));
  EXPECT_LT(absl::Now() - before, absl::Seconds(3));
}

TEST_F(CoordinatorStoreTest, AStaleRoundFailsAtOnce) {
  ASSERT_NO_FATAL_FAILURE(AssignRound());
  auto stale = MakeCoordinatorStore(StoreOptions(round_ + 6));
  ASSERT_TRUE(stale.ok());
  const absl::Time start = absl::Now();
  absl::Status set = (*stale)->Set("gloo/0", "x");
  EXPECT_EQ(set.code(), absl::StatusCode::kFailedPrecondition) << set;
  EXPECT_THAT(set.message(), HasSubstr("'gloo/0'"));
  absl::Status get = (*stale)->Get("gloo/0", absl::Now() + absl::Seconds(20)).status();
  EXPECT_EQ(get.code(), absl::StatusCode::kFailedPrecondition) << get;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(CoordinatorStoreTest, GlooConnectsThroughTheCoordinator) {
  ASSERT_NO_FATAL_FAILURE(AssignRound());
  // Both ranks as the one assigned worker: the coordinator scopes keys by job and round.
  std::vector<std::unique_ptr<Communicator>> group(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto store = MakeCoordinatorStore(StoreOptions(round_));
      ASSERT_TRUE(store.ok()) << store.status();
      GlooOptions o;
      o.rank = r;
      o.world_size = 2;
      o.store = *store;
      o.prefix = prefix_;
      o.connect_timeout = absl::Seconds(20);
      o.op_timeout = absl::Seconds(20);
      auto comm = GlooCommunicator::Connect(o);
      ASSERT_TRUE(comm.ok()) << comm.status();
      group[r] = *std::move(comm);
      std::vector<double> v = {1.0 + r};
      EXPECT_TRUE(group[r]->AllReduceSum(std::span<double>(v)).ok());
      EXPECT_EQ(v[0], 3.0);
    });
  }
  for (auto& t : threads) t.join();
}

TEST(CoordinatorStoreNoServerTest, UnreachableCoordinatorIsRetriedUntilTheDeadline) {
  // A port nothing listens on: bound, never listening.
  CoordinatorStoreOptions options;
  options.channel.address = "127.0.0.1:1";
  options.worker = "workers/w-1";
  options.job = "jobs/j-1";
  options.round = 1;
  auto store = MakeCoordinatorStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Time start = absl::Now();
  absl::Status get = (*store)->Get("k", start + absl::Milliseconds(700)).status();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(get.code(), absl::StatusCode::kDeadlineExceeded) << get;
  EXPECT_THAT(get.message(), HasSubstr("'k'"));
  EXPECT_GE(took, absl::Milliseconds(500));
  EXPECT_LT(took, absl::Seconds(3));
}

// A free port: bound for a moment, then released.
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<struct sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(CoordinatorStoreNoServerTest, ACoordinatorThatComesUpLateIsReached) {
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) / "comm_store_late").string();
  std::filesystem::remove_all(dir);
  const std::string address = absl::StrCat("127.0.0.1:", FreePort());
  CoordinatorStoreOptions options;
  options.channel.address = address;
  options.worker = "workers/w-1";
  options.job = "jobs/j-1";
  options.round = 1;
  auto store = MakeCoordinatorStore(options);
  ASSERT_TRUE(store.ok()) << store.status();
  std::unique_ptr<coordinator::CoordinatorServer> server;
  std::thread starter([&] {
    absl::SleepFor(absl::Milliseconds(400));
    coordinator::CoordinatorServerOptions server_options;
    server_options.state_dir = dir + "/state";
    server_options.run_root = dir + "/runs";
    server_options.rpc.listen = address;
    auto started = coordinator::CoordinatorServer::Start(server_options);
    ASSERT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
  });
  const absl::Time start = absl::Now();
  // Retried while nothing listens; then the coordinator's own answer (it knows no such worker
  // or job), long before the deadline.
  absl::Status get = (*store)->Get("k", start + absl::Seconds(20)).status();
  const absl::Duration took = absl::Now() - start;
  starter.join();
  EXPECT_NE(get.code(), absl::StatusCode::kUnavailable) << get;
  EXPECT_NE(get.code(), absl::StatusCode::kDeadlineExceeded) << get;
  EXPECT_NE(get.code(), absl::StatusCode::kOk) << get;
  EXPECT_GE(took, absl::Milliseconds(350));
  EXPECT_LT(took, absl::Seconds(10));
}

TEST(CoordinatorStoreNoServerTest, BadOptions) {
  CoordinatorStoreOptions options;
  options.channel.address = "127.0.0.1:1";
  options.worker = "workers/w-1";
  options.job = "jobs/j-1";
  EXPECT_EQ(MakeCoordinatorStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.round = 1;
  options.job.clear();
  EXPECT_EQ(MakeCoordinatorStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.job = "jobs/j-1";
  options.channel.address = "";
  EXPECT_FALSE(MakeCoordinatorStore(options).ok());
}

}  // namespace
}  // namespace qtrain::comm
