// RpcServer and RpcClient against real servers on ephemeral ports: health, reflection, tokens,
// message limits, TLS and mTLS (certificates made with the openssl tool at test time), and the
// lines Describe() gives for failed calls.
#include "common/rpc_server.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "common/rpc_security.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/message.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "openssl/bio.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "qtrain/v1/jobs.grpc.pb.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kUserToken[] = "user-token-0123456789";
constexpr char kClusterToken[] = "cluster-token-9876543210";

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

std::string WriteFile(const std::string& name, const std::string& content) {
  const std::string path = TempPath(name);
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// GetJob needs the user token, ListWorkers waits until the caller gives up (for deadlines).
class TestJobService final : public v1::JobService::Service {
 public:
  const ServerSecurity* security = nullptr;

  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* job) override {
    if (security != nullptr) {
      grpc::Status status = security->Check(*context, Realm::kUser);
      if (!status.ok()) return status;
    }
    job->set_name(request->name());
    return grpc::Status::OK;
  }

  grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse*) override {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!context->IsCancelled() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
    return grpc::Status(grpc::StatusCode::ABORTED, "the caller went away");
  }
};

// RegisterWorker needs the cluster token.
class TestWorkerService final : public v1::WorkerService::Service {
 public:
  const ServerSecurity* security = nullptr;

  grpc::Status RegisterWorker(grpc::ServerContext* context, const v1::RegisterWorkerRequest*,
                              v1::RegisterWorkerResponse*) override {
    if (security != nullptr) {
      grpc::Status status = security->Check(*context, Realm::kCluster);
      if (!status.ok()) return status;
    }
    return grpc::Status::OK;
  }
};

// A server with both test services, deleted before them.
struct TestServer {
  TestJobService jobs;
  TestWorkerService workers;
  std::unique_ptr<RpcServer> server;

  absl::Status Start(RpcServerOptions options) {
    absl::StatusOr<std::unique_ptr<RpcServer>> started =
        RpcServer::Start(options, {&jobs, &workers});
    if (!started.ok()) return started.status();
    server = *std::move(started);
    jobs.security = &server->security();
    workers.security = &server->security();
    return absl::OkStatus();
  }
  ~TestServer() { server.reset(); }
};

RpcClient MakeClient(const ChannelOptions& options) {
  absl::StatusOr<RpcClient> client = RpcClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

grpc::Status GetJob(const RpcClient& client, const std::string& name,
                    absl::Duration timeout = absl::Seconds(10)) {
  auto stub = v1::JobService::NewStub(client.channel());
  v1::GetJobRequest request;
  request.set_name(name);
  v1::Job job;
  auto context = client.NewContext(timeout);
  grpc::Status status = stub->GetJob(context.get(), request, &job);
  if (status.ok()) {
    EXPECT_EQ(job.name(), name);
  }
  return status;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

// grpc.health.v1.Health/Check through the generic stub (no generated health code is installed):
// HealthCheckRequest{service = 1} and HealthCheckResponse{status = 1} are encoded by hand.
enum HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2 };

absl::StatusOr<int> CheckHealth(const RpcClient& client, const std::string& service) {
  grpc::GenericStub stub(client.channel());
  grpc::CompletionQueue cq;
  auto context = client.NewContext(absl::Seconds(10));
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  auto call =
      stub.PrepareUnaryCall(context.get(), "/grpc.health.v1.Health/Check", ToBuffer(request), &cq);
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
  if (!status.ok())
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  const std::string bytes = FromBuffer(response);
  if (bytes.empty()) return kUnknown;
  if (bytes.size() != 2 || bytes[0] != 0x08) return absl::InternalError("unexpected response");
  return static_cast<int>(bytes[1]);
}

// Lists the services through reflection (grpc.reflection.v1alpha, whose generated messages
// the reflection library registers in protobuf's generated pool).
struct ReflectionResult {
  grpc::Status status;
  std::set<std::string> services;
  bool error_response = false;
};

ReflectionResult ListServicesByReflection(const RpcClient& client) {
  using google::protobuf::DescriptorPool;
  using google::protobuf::Message;
  using google::protobuf::MessageFactory;
  ReflectionResult result;
  const auto* request_type = DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionRequest");
  const auto* response_type = DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionResponse");
  if (request_type == nullptr || response_type == nullptr) {
    ADD_FAILURE() << "the reflection messages are not in the generated pool";
    return result;
  }
  std::unique_ptr<Message> request(
      MessageFactory::generated_factory()->GetPrototype(request_type)->New());
  request->GetReflection()->SetString(request.get(), request_type->FindFieldByName("list_services"),
                                      "");

  grpc::GenericStub stub(client.channel());
  grpc::CompletionQueue cq;
  auto context = client.NewContext(absl::Seconds(10));
  void* tag = nullptr;
  bool ok = false;
  auto next = [&] {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    return ok;
  };
  auto call = stub.PrepareCall(
      context.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  if (next()) {
    call->Write(ToBuffer(request->SerializeAsString()), reinterpret_cast<void*>(2));
    next();
    call->WritesDone(reinterpret_cast<void*>(3));
    next();
    while (true) {
      grpc::ByteBuffer buffer;
      call->Read(&buffer, reinterpret_cast<void*>(4));
      if (!next()) break;
      std::unique_ptr<Message> response(
          MessageFactory::generated_factory()->GetPrototype(response_type)->New());
      EXPECT_TRUE(response->ParseFromString(FromBuffer(buffer)));
      const auto* reflection = response->GetReflection();
      if (reflection->HasField(*response, response_type->FindFieldByName("error_response"))) {
        result.error_response = true;
      }
      const auto* list_field = response_type->FindFieldByName("list_services_response");
      if (!reflection->HasField(*response, list_field)) continue;
      const Message& list = reflection->GetMessage(*response, list_field);
      const auto* service_field = list.GetDescriptor()->FindFieldByName("service");
      for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field); ++i) {
        const Message& service = list.GetReflection()->GetRepeatedMessage(list, service_field, i);
        result.services.insert(service.GetReflection()->GetString(
            service, service.GetDescriptor()->FindFieldByName("name")));
      }
    }
  }
  call->Finish(&result.status, reinterpret_cast<void*>(5));
  next();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

RpcServerOptions TokenOptions(const std::string& listen) {
  RpcServerOptions options;
  options.listen = listen;
  options.security.auth_token_file = WriteFile("user.token", absl::StrCat(kUserToken, "\n"));
  options.security.cluster_token_file = WriteFile("cluster.token", kClusterToken);
  return options;
}

TEST(RpcServerTest, ServesOnAnEphemeralLoopbackPort) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0"}).ok());
  auto split = SplitHostPort(server.server->address());
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->first, "127.0.0.1");
  EXPECT_GT(split->second, 0);
  EXPECT_FALSE(server.server->security().requires_tokens());
  RpcClient client = MakeClient({.address = server.server->address()});
  EXPECT_TRUE(GetJob(client, "jobs/a").ok());
}

TEST(RpcServerTest, HealthStartsNotServingAndFollowsSetServing) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0"}).ok());
  RpcClient client = MakeClient({.address = server.server->address()});
  for (const char* service : {"", "qtrain.v1.JobService", "qtrain.v1.WorkerService"}) {
    auto health = CheckHealth(client, service);
    ASSERT_TRUE(health.ok()) << service << ": " << health.status();
    EXPECT_EQ(*health, kNotServing) << service;
  }
  server.server->SetServing(true);
  for (const char* service : {"", "qtrain.v1.JobService", "qtrain.v1.WorkerService"}) {
    auto health = CheckHealth(client, service);
    ASSERT_TRUE(health.ok()) << service << ": " << health.status();
    EXPECT_EQ(*health, kServing) << service;
  }
  server.server->SetServing(false);
  auto health = CheckHealth(client, "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, kNotServing);
  EXPECT_EQ(CheckHealth(client, "no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST(RpcServerTest, HealthNeedsNoToken) {
  TestServer server;
  ASSERT_TRUE(server.Start(TokenOptions("127.0.0.1:0")).ok());
  server.server->SetServing(true);
  RpcClient client = MakeClient({.address = server.server->address()});
  auto health = CheckHealth(client, "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, kServing);
}

TEST(RpcServerTest, ReflectionListsTheServices) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0"}).ok());
  RpcClient client = MakeClient({.address = server.server->address()});
  ReflectionResult result = ListServicesByReflection(client);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_TRUE(result.services.count("qtrain.v1.JobService"));
  EXPECT_TRUE(result.services.count("qtrain.v1.WorkerService"));
  EXPECT_TRUE(result.services.count("grpc.health.v1.Health"));
}

TEST(RpcServerTest, ReflectionNeedsATokenWhenTokensAreSet) {
  TestServer server;
  ASSERT_TRUE(server.Start(TokenOptions("127.0.0.1:0")).ok());
  const std::string address = server.server->address();

  ReflectionResult anonymous = ListServicesByReflection(MakeClient({.address = address}));
  EXPECT_EQ(anonymous.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(anonymous.status.error_message(), "missing bearer token");
  EXPECT_TRUE(anonymous.services.empty());

  ReflectionResult wrong = ListServicesByReflection(
      MakeClient({.address = address, .token_file = WriteFile("bad.token", "nope")}));
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(wrong.services.empty());

  for (const char* token : {kUserToken, kClusterToken}) {
    ReflectionResult result = ListServicesByReflection(
        MakeClient({.address = address, .token_file = WriteFile("either.token", token)}));
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_TRUE(result.services.count("qtrain.v1.JobService"));
  }
}

TEST(RpcServerTest, TokensAreCheckedPerRealm) {
  TestServer server;
  ASSERT_TRUE(server.Start(TokenOptions("127.0.0.1:0")).ok());
  const std::string address = server.server->address();
  const std::string user = WriteFile("realm_user.token", kUserToken);
  const std::string cluster = WriteFile("realm_cluster.token", kClusterToken);
  const std::string wrong = WriteFile("realm_wrong.token", "user-token-012345678X");

  grpc::Status status = GetJob(MakeClient({.address = address}), "jobs/x");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "missing bearer token");

  status = GetJob(MakeClient({.address = address, .token_file = wrong}), "jobs/x");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "invalid bearer token");

  // The cluster token is not a user token.
  status = GetJob(MakeClient({.address = address, .token_file = cluster}), "jobs/x");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), Not(HasSubstr(kClusterToken)));
  EXPECT_THAT(status.error_message(), Not(HasSubstr(kUserToken)));

  EXPECT_TRUE(GetJob(MakeClient({.address = address, .token_file = user}), "jobs/x").ok());

  auto register_worker = [&](const std::string& token_file) {
    RpcClient client = MakeClient({.address = address, .token_file = token_file});
    auto stub = v1::WorkerService::NewStub(client.channel());
    v1::RegisterWorkerRequest request;
    v1::RegisterWorkerResponse response;
    auto context = client.NewContext(absl::Seconds(10));
    return stub->RegisterWorker(context.get(), request, &response);
  };
  EXPECT_TRUE(register_worker(cluster).ok());
  EXPECT_EQ(register_worker(user).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(register_worker("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST(RpcServerTest, MalformedAuthorizationIsMissing) {
  TestServer server;
  ASSERT_TRUE(server.Start(TokenOptions("127.0.0.1:0")).ok());
  RpcClient client = MakeClient({.address = server.server->address()});
  auto stub = v1::JobService::NewStub(client.channel());
  for (const std::string& value :
       {std::string(kUserToken), absl::StrCat("Basic ", kUserToken), std::string("Bearer ")}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", value);
    v1::GetJobRequest request;
    v1::Job job;
    grpc::Status status = stub->GetJob(&context, request, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << value;
    EXPECT_EQ(status.error_message(), "missing bearer token") << value;
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("bearer ", kUserToken));
  v1::GetJobRequest request;
  v1::Job job;
  EXPECT_TRUE(stub->GetJob(&context, request, &job).ok()) << "the scheme is case-insensitive";
}

TEST(RpcServerTest, AnyAddressNeedsTokens) {
  TestServer refused;
  absl::Status status = refused.Start({.listen = "0.0.0.0:0"});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--auth-token-file"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("--cluster-token-file"));

  TestServer server;
  status = server.Start(TokenOptions("0.0.0.0:0"));
  ASSERT_TRUE(status.ok()) << status;
  auto split = SplitHostPort(server.server->address());
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->first, "0.0.0.0");
  ASSERT_GT(split->second, 0);
  const std::string loopback = JoinHostPort("127.0.0.1", split->second);
  EXPECT_EQ(GetJob(MakeClient({.address = loopback}), "jobs/x").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(
      GetJob(MakeClient({.address = loopback, .token_file = WriteFile("any.token", kUserToken)}),
             "jobs/x")
          .ok());
}

TEST(RpcServerTest, BusyPortIsUnavailableNamingTheAddress) {
  TestServer first;
  ASSERT_TRUE(first.Start({.listen = "127.0.0.1:0"}).ok());
  TestServer second;
  absl::Status status = second.Start({.listen = first.server->address()});
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr(first.server->address()));
  EXPECT_THAT(std::string(status.message()), HasSubstr("in use"));
  EXPECT_TRUE(GetJob(MakeClient({.address = first.server->address()}), "jobs/a").ok());
}

TEST(RpcServerTest, ForeignAddressIsUnavailableWithTheReason) {
  TestServer server;
  // 192.0.2.0/24 is reserved for documentation: no machine has it.
  absl::Status status = server.Start(TokenOptions("192.0.2.1:7070"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot listen on 192.0.2.1:7070"));
  status = server.Start(TokenOptions("192.0.2.1:0"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr("Cannot assign requested address"));
}

TEST(RpcServerTest, ListensOnLocalhostAndIpv6Loopback) {
  TestServer by_name;
  ASSERT_TRUE(by_name.Start({.listen = "localhost:0"}).ok());
  auto split = SplitHostPort(by_name.server->address());
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->first, "localhost");
  EXPECT_TRUE(GetJob(MakeClient({.address = by_name.server->address()}), "jobs/l").ok());

  if (ReadAll("/proc/net/if_inet6").find("00000000000000000000000000000001") == std::string::npos) {
    GTEST_SKIP() << "no IPv6 loopback on this machine";
  }
  TestServer v6;
  ASSERT_TRUE(v6.Start({.listen = "[::1]:0"}).ok());
  EXPECT_EQ(v6.server->address().rfind("[::1]:", 0), 0u) << v6.server->address();
  EXPECT_TRUE(GetJob(MakeClient({.address = v6.server->address()}), "jobs/6").ok());
}

TEST(RpcServerTest, BadOptionsAreRefused) {
  TestServer server;
  EXPECT_EQ(server.Start({.listen = "127.0.0.1"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.Start({.listen = "127.0.0.1:0", .max_receive_message_bytes = 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server.Start({.listen = "127.0.0.1:0", .max_send_message_bytes = -1}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RpcServerTest, OversizedRequestIsResourceExhausted) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0", .max_receive_message_bytes = 4096}).ok());
  RpcClient client = MakeClient({.address = server.server->address()});
  grpc::Status status = GetJob(client, std::string(64 << 10, 'x'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  // The server is still there.
  EXPECT_TRUE(GetJob(client, "jobs/small").ok());
}

TEST(RpcServerTest, OversizedResponsesAreResourceExhausted) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0", .max_send_message_bytes = 4096}).ok());
  // The test service echoes the name: a large request makes a large response.
  grpc::Status status =
      GetJob(MakeClient({.address = server.server->address()}), std::string(8 << 10, 'y'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  TestServer roomy;
  ASSERT_TRUE(roomy.Start({.listen = "127.0.0.1:0"}).ok());
  RpcClient small = MakeClient({.address = roomy.server->address(), .max_message_bytes = 4096});
  status = GetJob(small, std::string(3 << 10, 'z'));
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = GetJob(small, std::string(8 << 10, 'z'));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST(RpcServerTest, ShutdownStopsServingAndIsIdempotent) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0"}).ok());
  const std::string address = server.server->address();
  RpcClient client = MakeClient({.address = address});
  ASSERT_TRUE(GetJob(client, "jobs/a").ok());
  server.server->Shutdown(absl::Milliseconds(100));
  server.server->Shutdown();
  EXPECT_EQ(GetJob(client, "jobs/a", absl::Seconds(2)).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(WriteAddressFileTest, WritesTheAddressAtomically) {
  const std::string path = TempPath("coordinator.address");
  ASSERT_TRUE(WriteAddressFile(path, "127.0.0.1:4242").ok());
  EXPECT_EQ(ReadAll(path), "127.0.0.1:4242\n");
  ASSERT_TRUE(WriteAddressFile(path, "[::1]:4243").ok());
  EXPECT_EQ(ReadAll(path), "[::1]:4243\n");
  EXPECT_EQ(WriteAddressFile(path, "nonsense").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAll(path), "[::1]:4243\n");
  EXPECT_FALSE(WriteAddressFile(TempPath("no/such/dir/address"), "127.0.0.1:1").ok());
}

TEST(RpcClientTest, BadOptionsAreInvalidArgument) {
  const std::string pem = WriteFile("client_some.pem", "-----BEGIN CERTIFICATE-----\nAA==\n");
  struct Case {
    ChannelOptions options;
    const char* expected;
  };
  const Case cases[] = {
      {{.address = "nohost"}, "nohost"},
      {{.address = "127.0.0.1:1", .token_file = TempPath("missing.token")}, "missing.token"},
      {{.address = "127.0.0.1:1", .tls_cert = pem, .tls_key = pem}, "--tls-ca"},
      {{.address = "127.0.0.1:1", .tls_server_name = "x"}, "--tls-ca"},
      {{.address = "127.0.0.1:1", .tls_ca = TempPath("missing_ca.pem")}, "missing_ca.pem"},
      {{.address = "127.0.0.1:1", .tls_ca = pem, .tls_cert = pem}, "--tls-key"},
      {{.address = "127.0.0.1:1", .max_message_bytes = 0}, "positive"},
  };
  for (const Case& c : cases) {
    auto client = RpcClient::Create(c.options);
    ASSERT_FALSE(client.ok()) << c.expected;
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(client.status().message()), HasSubstr(c.expected));
  }
}

TEST(RpcClientTest, DescribeUnreachable) {
  std::string address;
  {
    TestServer gone;
    ASSERT_TRUE(gone.Start({.listen = "127.0.0.1:0"}).ok());
    address = gone.server->address();
  }
  RpcClient client = MakeClient({.address = address});
  grpc::Status status = GetJob(client, "jobs/a", absl::Seconds(5));
  ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  absl::Status described = client.Describe(status, "GetJob");
  EXPECT_EQ(described.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(described.message(), absl::StrCat("cannot reach the coordinator at ", address,
                                              ": connection refused; is it running?"));
}

TEST(RpcClientTest, DescribeDeadline) {
  TestServer server;
  ASSERT_TRUE(server.Start({.listen = "127.0.0.1:0"}).ok());
  RpcClient client = MakeClient({.address = server.server->address()});
  auto stub = v1::JobService::NewStub(client.channel());
  auto context = client.NewContext(absl::Milliseconds(300));
  v1::ListWorkersRequest request;
  v1::ListWorkersResponse response;
  grpc::Status status = stub->ListWorkers(context.get(), request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  absl::Status described = client.Describe(status, "ListWorkers");
  EXPECT_EQ(described.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(described.message(),
            absl::StrCat("cannot reach the coordinator at ", server.server->address(),
                         ": ListWorkers did not answer within 300ms"));
  EXPECT_THAT(std::string(client.Describe(status, "ListWorkers", absl::Seconds(10)).message()),
              HasSubstr("did not answer within 10s"));
}

TEST(RpcClientTest, ContextDeadlines) {
  RpcClient client = MakeClient({.address = "127.0.0.1:1"});
  const auto now = std::chrono::system_clock::now();
  auto bounded = client.NewContext(absl::Seconds(10));
  EXPECT_GT(bounded->deadline(), now + std::chrono::seconds(9));
  EXPECT_LT(bounded->deadline(), now + std::chrono::seconds(11));
  auto unbounded = client.NewContext(absl::InfiniteDuration());
  EXPECT_GT(unbounded->deadline(), now + std::chrono::hours(24 * 365 * 10));
  auto stream = client.NewStreamContext();
  EXPECT_GT(stream->deadline(), now + std::chrono::hours(24 * 365 * 10));
  auto past = client.NewContext(-absl::Seconds(5));
  EXPECT_LE(past->deadline(), std::chrono::system_clock::now());
}

TEST(RpcClientTest, DescribeOtherCodes) {
  RpcClient client = MakeClient({.address = "127.0.0.1:1"});
  EXPECT_TRUE(client.Describe(grpc::Status::OK, "GetJob").ok());
  absl::Status described =
      client.Describe(grpc::Status(grpc::StatusCode::NOT_FOUND, "no job jobs/x"), "GetJob");
  EXPECT_EQ(described.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(described.message(), "GetJob: no job jobs/x");
  described = client.Describe(
      grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing bearer token"), "GetJob");
  EXPECT_EQ(described.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(described.message()), HasSubstr("missing bearer token"));
  RpcClient with_token =
      MakeClient({.address = "127.0.0.1:1", .token_file = WriteFile("describe.token", kUserToken)});
  described = with_token.Describe(
      grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token"), "GetJob");
  EXPECT_EQ(described.message(),
            "the coordinator at 127.0.0.1:1 refused the token: invalid bearer token");
  EXPECT_THAT(std::string(described.message()), Not(HasSubstr(kUserToken)));
}

// Certificates made at test time: a CA, a server certificate for 127.0.0.1/localhost and a
// client certificate, all signed by the CA, and a second CA that signed nothing.
class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("openssl version > /dev/null 2>&1") != 0) return;
    dir_ = new std::string(TempPath("tls"));
    const std::string script = absl::StrCat(
        "set -e; mkdir -p '", *dir_, "'; cd '", *dir_, "'\n",
        "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \"$1\"; }\n",
        "ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 "
        "-subj /CN=$1 -addext basicConstraints=critical,CA:TRUE "
        "-addext keyUsage=critical,keyCertSign,cRLSign; }\n",
        "leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj /CN=$1; "
        "printf '%s\\n' \"$2\" > $1.ext; openssl x509 -req -in $1.csr -CA ca.pem -CAkey ca.key "
        "-set_serial $3 -days 2 -out $1.pem -extfile $1.ext; }\n",
        "ca ca; ca other_ca\n",
        "leaf server 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth' "
        "2\n",
        "leaf client 'extendedKeyUsage=clientAuth' 3\n",
        "openssl pkey -in server.key -aes256 -passout pass:secret -out encrypted.key\n");
    const std::string script_path = absl::StrCat(*dir_, ".sh");
    std::ofstream(script_path) << script;
    const int rc = std::system(
        absl::StrCat("timeout 60 sh '", script_path, "' > '", *dir_, ".log' 2>&1").c_str());
    made_ = rc == 0;
  }

  void SetUp() override {
    if (dir_ == nullptr) GTEST_SKIP() << "the openssl tool is not installed";
    ASSERT_TRUE(made_) << "openssl failed: " << ReadAll(absl::StrCat(*dir_, ".log"));
  }

  static std::string File(const std::string& name) { return absl::StrCat(*dir_, "/", name); }

  RpcServerOptions TlsOptions(bool mtls) const {
    RpcServerOptions options;
    options.security.tls_cert = File("server.pem");
    options.security.tls_key = File("server.key");
    if (mtls) options.security.tls_client_ca = File("ca.pem");
    return options;
  }

  static std::string* dir_;
  static bool made_;
};

std::string* TlsTest::dir_ = nullptr;
bool TlsTest::made_ = false;

// A self-signed certificate for `key_pem` that expired yesterday (the openssl tool cannot make
// one without a CA database).
std::string ExpiredCertificatePem(const std::string& key_pem) {
  BIO* key_bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
  X509_gmtime_adj(X509_getm_notBefore(cert), -2 * 86400);
  X509_gmtime_adj(X509_getm_notAfter(cert), -86400);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("expired"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_sign(cert, key, EVP_sha256());
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(out, cert);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(out);
  X509_free(cert);
  EVP_PKEY_free(key);
  BIO_free(key_bio);
  return pem;
}

TEST_F(TlsTest, BadFilesAreRefusedAtStart) {
  const std::string expired =
      WriteFile("expired.pem", ExpiredCertificatePem(ReadAll(File("server.key"))));
  struct Case {
    ServerSecurityOptions options;
    const char* expected;
  };
  const Case cases[] = {
      {{.tls_cert = File("server.pem"), .tls_key = File("client.key")},
       "the key of --tls-key is not the one of the certificate of --tls-cert"},
      {{.tls_cert = File("server.pem"), .tls_key = File("server.pem")},
       "no readable unencrypted PEM private key"},
      {{.tls_cert = File("server.pem"), .tls_key = File("encrypted.key")},
       "no readable unencrypted PEM private key"},
      {{.tls_cert = File("server.key"), .tls_key = File("server.key")},
       "no readable PEM certificate"},
      {{.tls_cert = expired, .tls_key = File("server.key")}, "expired"},
      {{.tls_cert = File("server.pem"), .tls_key = File("server.key"), .tls_client_ca = *dir_},
       "--tls-client-ca"},
      {{.tls_cert = File("server.pem"),
        .tls_key = File("server.key"),
        .tls_client_ca = File("server.key")},
       "--tls-client-ca"},
  };
  for (const Case& c : cases) {
    RpcServerOptions options;
    options.security = c.options;
    TestServer server;
    absl::Status status = server.Start(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.expected << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected));
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr("PRIVATE KEY-----")));
  }

  const ChannelOptions client_cases[] = {
      {.address = "127.0.0.1:1", .tls_ca = File("server.key")},
      {.address = "127.0.0.1:1",
       .tls_ca = File("ca.pem"),
       .tls_cert = File("client.pem"),
       .tls_key = File("server.key")},
      {.address = "127.0.0.1:1",
       .tls_ca = File("ca.pem"),
       .tls_cert = expired,
       .tls_key = File("server.key")},
      {.address = "127.0.0.1:1",
       .tls_ca = File("ca.pem"),
       .tls_cert = File("client.pem"),
       .tls_key = File("encrypted.key")},
  };
  for (const ChannelOptions& options : client_cases) {
    auto client = RpcClient::Create(options);
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << client.status();
  }
}

TEST_F(TlsTest, CallsNeedTheCa) {
  TestServer server;
  ASSERT_TRUE(server.Start(TlsOptions(/*mtls=*/false)).ok());
  ASSERT_TRUE(server.server->security().tls());
  const std::string address = server.server->address();

  grpc::Status status =
      GetJob(MakeClient({.address = address, .tls_ca = File("ca.pem")}), "jobs/t");
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = GetJob(
      MakeClient({.address = address, .tls_ca = File("ca.pem"), .tls_server_name = "localhost"}),
      "jobs/t");
  EXPECT_TRUE(status.ok()) << status.error_message();

  // Plaintext to a TLS port, and a CA that did not sign the server's certificate.
  RpcClient plaintext = MakeClient({.address = address});
  status = GetJob(plaintext, "jobs/t", absl::Seconds(5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  RpcClient other = MakeClient({.address = address, .tls_ca = File("other_ca.pem")});
  status = GetJob(other, "jobs/t", absl::Seconds(5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  const std::string described(other.Describe(status, "GetJob").message());
  EXPECT_THAT(described, HasSubstr("cannot reach the coordinator at " + address));
  EXPECT_THAT(described, HasSubstr("TLS handshake failed"));
  EXPECT_THAT(described, Not(HasSubstr("is it running")));
  // A name the certificate does not carry.
  status = GetJob(MakeClient({.address = address,
                              .tls_ca = File("ca.pem"),
                              .tls_server_name = "elsewhere.example.com"}),
                  "jobs/t", absl::Seconds(5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificate) {
  TestServer server;
  ASSERT_TRUE(server.Start(TlsOptions(/*mtls=*/true)).ok());
  const std::string address = server.server->address();

  grpc::Status status = GetJob(MakeClient({.address = address, .tls_ca = File("ca.pem")}), "jobs/m",
                               absl::Seconds(5));
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  status = GetJob(MakeClient({.address = address,
                              .tls_ca = File("ca.pem"),
                              .tls_cert = File("client.pem"),
                              .tls_key = File("client.key")}),
                  "jobs/m");
  EXPECT_TRUE(status.ok()) << status.error_message();

  // A certificate the client CA did not sign.
  status = GetJob(MakeClient({.address = address,
                              .tls_ca = File("ca.pem"),
                              .tls_cert = File("other_ca.pem"),
                              .tls_key = File("other_ca.key")}),
                  "jobs/m", absl::Seconds(5));
  EXPECT_FALSE(status.ok());
}

TEST_F(TlsTest, TlsWithTokens) {
  TestServer server;
  RpcServerOptions options = TlsOptions(/*mtls=*/false);
  options.security.auth_token_file = WriteFile("tls_user.token", kUserToken);
  ASSERT_TRUE(server.Start(options).ok());
  const std::string address = server.server->address();
  EXPECT_EQ(
      GetJob(MakeClient({.address = address, .tls_ca = File("ca.pem")}), "jobs/t").error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(GetJob(MakeClient({.address = address,
                                 .token_file = WriteFile("tls_user2.token", kUserToken),
                                 .tls_ca = File("ca.pem")}),
                     "jobs/t")
                  .ok());
}

}  // namespace
}  // namespace qtrain
