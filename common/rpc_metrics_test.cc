// RpcServer's call metrics against a real server on an ephemeral port and a real gRPC client:
// codes counted per method (token refusals included), unknown methods under one label, and
// latency histograms for unary calls only.
#include "common/rpc_metrics.h"

#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/rpc_channel.h"
#include "common/rpc_server.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "qtrain/v1/jobs.grpc.pb.h"

namespace qtrain {
namespace {

constexpr char kUserToken[] = "metrics-user-token-0123456789";

// GetJob: NOT_FOUND for "jobs/missing", else OK; WatchJob: one event, then OK.
class TestJobService final : public v1::JobService::CallbackService {
 public:
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::Job* job) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (security != nullptr) {
      if (grpc::Status auth = security->Check(*context, Realm::kUser); !auth.ok()) {
        reactor->Finish(auth);
        return reactor;
      }
    }
    if (request->name() == "jobs/missing") {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no job named jobs/missing"));
    } else {
      job->set_name(request->name());
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext*,
                                                   const v1::WatchJobRequest* request) override {
    // "jobs/hang" stays open until the client cancels it.
    class Writer : public grpc::ServerWriteReactor<v1::JobEvent> {
     public:
      explicit Writer(const std::string& job) {
        event_.set_job(job);
        if (job != "jobs/hang")
          StartWriteAndFinish(&event_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnCancel() override { Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")); }
      void OnDone() override { delete this; }

     private:
      v1::JobEvent event_;
    };
    if (request->name() == "jobs/hang") ++hanging;
    return new Writer(request->name());
  }
  std::atomic<int> hanging{0};  // WatchJob calls of "jobs/hang" started

  const ServerSecurity* security = nullptr;
};

struct Fixture {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  TestJobService jobs;
  std::unique_ptr<RpcServer> server;

  void Start(RpcServerOptions options = {}) {
    options.metrics = registry;
    auto started = RpcServer::Start(options, {&jobs});
    ASSERT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
    jobs.security = &server->security();
  }
  ~Fixture() { server.reset(); }

  RpcClient Client(const std::string& token_file = "") const {
    auto client = RpcClient::Create({.address = server->address(), .token_file = token_file});
    EXPECT_TRUE(client.ok()) << client.status();
    return *std::move(client);
  }

  // The counter qtrain_rpc_total{method, code}; -1 when there is no such series.
  double Total(const std::string& method, const std::string& code) const {
    for (const auto& family : registry->Collect()) {
      if (family.name != "qtrain_rpc_total") continue;
      EXPECT_EQ(family.type, prometheus::MetricType::Counter);
      for (const auto& m : family.metric) {
        const std::vector<prometheus::ClientMetric::Label> want = {{"code", code},
                                                                   {"method", method}};
        if (m.label == want) return m.counter.value;
      }
    }
    return -1;
  }
  // qtrain_rpc_seconds{method}'s sample count; -1 when there is no such series.
  int64_t HistogramCount(const std::string& method) const {
    for (const auto& family : registry->Collect()) {
      if (family.name != "qtrain_rpc_seconds") continue;
      EXPECT_EQ(family.type, prometheus::MetricType::Histogram);
      for (const auto& m : family.metric) {
        if (m.label.size() == 1 && m.label[0].value == method) {
          return static_cast<int64_t>(m.histogram.sample_count);
        }
      }
    }
    return -1;
  }
  std::vector<std::string> Methods() const {
    std::vector<std::string> methods;
    for (const auto& family : registry->Collect()) {
      if (family.name != "qtrain_rpc_total") continue;
      for (const auto& m : family.metric) {
        for (const auto& l : m.label) {
          if (l.name == "method") methods.push_back(l.value);
        }
      }
    }
    return methods;
  }
};

grpc::Status GetJob(const RpcClient& client, const std::string& name) {
  auto stub = v1::JobService::NewStub(client.channel());
  v1::GetJobRequest request;
  request.set_name(name);
  v1::Job job;
  auto context = client.NewContext(absl::Seconds(10));
  return stub->GetJob(context.get(), request, &job);
}

grpc::Status WatchJob(const RpcClient& client, const std::string& name) {
  auto stub = v1::JobService::NewStub(client.channel());
  v1::WatchJobRequest request;
  request.set_name(name);
  auto context = client.NewContext(absl::Seconds(10));
  auto reader = stub->WatchJob(context.get(), request);
  v1::JobEvent event;
  while (reader->Read(&event)) {
  }
  return reader->Finish();
}

// A unary call of `method` with an empty request through the generic stub.
grpc::Status CallGeneric(const RpcClient& client, const std::string& method) {
  grpc::GenericStub stub(client.channel());
  grpc::CompletionQueue cq;
  auto context = client.NewContext(absl::Seconds(10));
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  auto call = stub.PrepareUnaryCall(context.get(), method, request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

TEST(RpcMetricsTest, CountsCodesPerMethodAndTimesUnaryCalls) {
  Fixture f;
  f.Start();
  const RpcClient client = f.Client();
  ASSERT_TRUE(GetJob(client, "jobs/a").ok());
  ASSERT_TRUE(GetJob(client, "jobs/b").ok());
  ASSERT_EQ(GetJob(client, "jobs/missing").error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(WatchJob(client, "jobs/a").ok());
  // The server records as it sends the status, the client may see it a moment before.
  for (int i = 0; i < 200 && f.Total("qtrain.v1.JobService/WatchJob", "OK") < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(f.Total("qtrain.v1.JobService/GetJob", "OK"), 2);
  EXPECT_EQ(f.Total("qtrain.v1.JobService/GetJob", "NOT_FOUND"), 1);
  EXPECT_EQ(f.Total("qtrain.v1.JobService/WatchJob", "OK"), 1);
  EXPECT_EQ(f.HistogramCount("qtrain.v1.JobService/GetJob"), 3);
  // Streams are counted, not timed.
  EXPECT_EQ(f.HistogramCount("qtrain.v1.JobService/WatchJob"), -1);
}

TEST(RpcMetricsTest, CountsAStreamTheClientCancelled) {
  Fixture f;
  f.Start();
  const RpcClient client = f.Client();
  auto stub = v1::JobService::NewStub(client.channel());
  v1::WatchJobRequest request;
  request.set_name("jobs/hang");
  auto context = client.NewContext(absl::Seconds(10));
  auto reader = stub->WatchJob(context.get(), request);
  for (int i = 0; i < 500 && f.jobs.hanging.load() == 0; ++i)
    absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(f.jobs.hanging.load(), 1);
  context->TryCancel();
  v1::JobEvent event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 500 && f.Total("qtrain.v1.JobService/WatchJob", "CANCELLED") < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(f.Total("qtrain.v1.JobService/WatchJob", "CANCELLED"), 1);
  EXPECT_EQ(f.Total("qtrain.v1.JobService/WatchJob", "OK"), -1);
}

TEST(RpcMetricsTest, UnknownMethodsShareOneLabel) {
  Fixture f;
  f.Start();
  const RpcClient client = f.Client();
  EXPECT_EQ(CallGeneric(client, "/qtrain.v1.NoSuchService/Anything").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallGeneric(client, "/qtrain.v1.JobService/NoSuchMethod").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallGeneric(client, "/made.up/x-1").error_code(), grpc::StatusCode::UNIMPLEMENTED);
  for (int i = 0; i < 200 && f.Total("unknown", "UNIMPLEMENTED") < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(f.Total("unknown", "UNIMPLEMENTED"), 3);
  for (const std::string& method : f.Methods()) {
    EXPECT_TRUE(method == "unknown" || method.rfind("qtrain.v1.", 0) == 0 ||
                method.rfind("grpc.", 0) == 0)
        << method;
    EXPECT_EQ(method.find("NoSuch"), std::string::npos) << method;
    EXPECT_EQ(method.find("made.up"), std::string::npos) << method;
  }
  EXPECT_EQ(f.HistogramCount("unknown"), -1);
}

TEST(RpcMetricsTest, HealthChecksHaveTheirOwnLabel) {
  Fixture f;
  f.Start();
  const RpcClient client = f.Client();
  // An empty HealthCheckRequest asks for the overall status.
  EXPECT_TRUE(CallGeneric(client, "/grpc.health.v1.Health/Check").ok());
  for (int i = 0; i < 200 && f.Total("grpc.health.v1.Health/Check", "OK") < 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(f.Total("grpc.health.v1.Health/Check", "OK"), 1);
  EXPECT_EQ(f.HistogramCount("grpc.health.v1.Health/Check"), 1);
}

TEST(RpcMetricsTest, TokenRefusalsAreCounted) {
  const std::string token_file = ::testing::TempDir() + "/rpc_metrics_user_token";
  std::ofstream(token_file) << kUserToken << "\n";
  const std::string wrong_file = ::testing::TempDir() + "/rpc_metrics_wrong_token";
  std::ofstream(wrong_file) << "not-the-token\n";
  Fixture f;
  RpcServerOptions options;
  options.security.auth_token_file = token_file;
  f.Start(options);
  EXPECT_EQ(GetJob(f.Client(), "jobs/a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GetJob(f.Client(wrong_file), "jobs/a").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(GetJob(f.Client(token_file), "jobs/a").ok());
  EXPECT_EQ(f.Total("qtrain.v1.JobService/GetJob", "UNAUTHENTICATED"), 2);
  EXPECT_EQ(f.Total("qtrain.v1.JobService/GetJob", "OK"), 1);
}

TEST(RpcMetricsTest, CodeNames) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::NOT_FOUND), "NOT_FOUND");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(99), "UNKNOWN");
  EXPECT_EQ(GrpcCodeName(-1), "UNKNOWN");
}

}  // namespace
}  // namespace qtrain
