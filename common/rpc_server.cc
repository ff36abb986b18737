#include "common/rpc_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/rpc_metrics.h"
#include "common/status_macros.h"
#include "google/protobuf/message.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/impl/server_initializer.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/server_interceptor.h"

namespace qtrain {
namespace {

constexpr std::string_view kHealthService = "grpc.health.v1.Health";
constexpr absl::string_view kReflectionPrefix = "/grpc.reflection.";

// Reports the names of the services the server ended up with (ours plus health and
// reflection), which grpc::Service does not expose: once before the server starts (the
// registered services) and once after (with the ones added while starting).
using ServiceListCallback = std::function<void(const std::vector<std::string>&)>;

class ServiceListPlugin : public grpc::ServerBuilderPlugin {
 public:
  explicit ServiceListPlugin(ServiceListCallback on_list) : on_list_(std::move(on_list)) {}
  std::string name() override { return "qtrain_service_list"; }
  void InitServer(grpc::ServerInitializer* si) override { on_list_(*si->GetServiceList()); }
  void Finish(grpc::ServerInitializer* si) override { on_list_(*si->GetServiceList()); }
  void ChangeArguments(const std::string&, void*) override {}

 private:
  ServiceListCallback on_list_;
};

class ServiceListOption : public grpc::ServerBuilderOption {
 public:
  explicit ServiceListOption(ServiceListCallback on_list) : on_list_(std::move(on_list)) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ServiceListPlugin>(on_list_));
  }

 private:
  ServiceListCallback on_list_;
};

// Reflection is gRPC's own service, so its handlers cannot call ServerSecurity::Check. When
// tokens are set, a reflection call without a valid one has its requests emptied before the
// handler sees them (it then answers only "unimplemented" errors, revealing nothing) and ends
// UNAUTHENTICATED.
class ReflectionAuthInterceptor : public grpc::experimental::Interceptor {
 public:
  ReflectionAuthInterceptor(grpc::experimental::ServerRpcInfo* info, const ServerSecurity* security)
      : info_(info), security_(security) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (!checked_) {
      denial_ = security_->Check(*info_->server_context(), Realm::kEither);
      checked_ = true;
    }
    if (!denial_.ok()) {
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
        void* message = methods->GetRecvMessage();
        if (message != nullptr) static_cast<google::protobuf::Message*>(message)->Clear();
      }
      if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
        methods->ModifySendStatus(denial_);
      }
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const ServerSecurity* security_;
  bool checked_ = false;
  grpc::Status denial_;
};

class ReflectionAuthFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReflectionAuthFactory(const ServerSecurity* security) : security_(security) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (!absl::StartsWith(info->method(), kReflectionPrefix)) return nullptr;
    return new ReflectionAuthInterceptor(info, security_);
  }

 private:
  const ServerSecurity* security_;
};

// Both plugins are process-wide switches; they are set once, before the first server.
void EnableHealthAndReflection() {
  static std::once_flag once;
  std::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

// Binds a plain socket to a numeric address first, so that a busy or foreign address is
// reported with the system's reason; gRPC only says that no address could be added. Host
// names are left to gRPC.
absl::Status ProbeBind(const std::string& host, int port, absl::string_view listen) {
  sockaddr_storage storage{};
  socklen_t size = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    size = sizeof(*v4);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    size = sizeof(*v6);
  } else {
    return absl::OkStatus();
  }
  ScopedFd fd(socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return absl::OkStatus();
  const int one = 1;
  // As gRPC does: a port in TIME_WAIT from an earlier server is free.
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), size) != 0) {
    const int err = errno;
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen, ": ", std::strerror(err),
                     err == EADDRINUSE ? " (is another server running?)" : ""));
  }
  return absl::OkStatus();
}

// Message limits, no shared ports, and keepalive: pings find a vanished peer (a machine gone
// without closing its connections) in about 40 s; clients may ping every 10 s or more. No
// bandwidth-delay probing: its PINGs cost a write per message on a thousand heartbeat streams
// (a third of the coordinator's socket calls), and the service's messages are small.
void ConfigureChannel(const RpcServerOptions& options, grpc::ServerBuilder* builder) {
  // gRPC sets SO_REUSEPORT by default, which would let a second server share a busy port.
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder->SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder->SetMaxSendMessageSize(options.max_send_message_bytes);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
}

absl::Status CheckMessageLimit(absl::string_view name, int bytes) {
  if (bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, got ", bytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Start(
    const RpcServerOptions& options, const std::vector<grpc::Service*>& services) {
  QTRAIN_ASSIGN_OR_RETURN(auto host_port, SplitHostPort(options.listen));
  QTRAIN_RETURN_IF_ERROR(
      CheckMessageLimit("the maximum received message size", options.max_receive_message_bytes));
  QTRAIN_RETURN_IF_ERROR(
      CheckMessageLimit("the maximum sent message size", options.max_send_message_bytes));
  for (const grpc::Service* service : services) {
    if (service == nullptr) return absl::InvalidArgumentError("RpcServer::Start: a null service");
  }
  ServerSecurityOptions security_options = options.security;
  security_options.listen = options.listen;

  std::unique_ptr<RpcServer> server(new RpcServer());
  QTRAIN_ASSIGN_OR_RETURN(server->security_, ServerSecurity::Load(security_options));
  QTRAIN_RETURN_IF_ERROR(ProbeBind(host_port.first, host_port.second, options.listen));
  EnableHealthAndReflection();

  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(options.listen, server->security_.credentials(), &selected_port);
  ConfigureChannel(options, &builder);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::shared_ptr<RpcMetrics> metrics;
  if (options.metrics != nullptr) metrics = std::make_shared<RpcMetrics>(options.metrics);
  auto names = std::make_shared<std::vector<std::string>>();
  builder.SetOption(
      std::make_unique<ServiceListOption>([names, metrics](const std::vector<std::string>& list) {
        *names = list;
        if (metrics != nullptr) metrics->SetServices(list);
      }));
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  if (server->security_.requires_tokens()) {
    factories.push_back(std::make_unique<ReflectionAuthFactory>(&server->security_));
  }
  // After the reflection check, so that the status it imposes is the one counted.
  if (metrics != nullptr) factories.push_back(metrics->InterceptorFactory());
  if (!factories.empty()) builder.experimental().SetInterceptorCreators(std::move(factories));

  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || selected_port == 0) {
    if (server->server_ != nullptr) server->server_->Shutdown();
    server->server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen,
                     ": the address cannot be bound (in use, not local, or not permitted)"));
  }
  for (const std::string& name : *names) {
    if (name != kHealthService) server->service_names_.push_back(name);
  }
  server->address_ = JoinHostPort(host_port.first, selected_port);
  server->SetServing(false);
  QTRAIN_LOG(INFO) << "serving on " << server->address_
                   << (server->security_.tls() ? " (TLS)" : " (plaintext)")
                   << (server->security_.requires_tokens() ? ", bearer tokens required" : "");
  return server;
}

RpcServer::~RpcServer() { Shutdown(); }

void RpcServer::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  for (const std::string& name : service_names_) health->SetServingStatus(name, serving);
}

void RpcServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  if (grace < absl::ZeroDuration()) grace = absl::ZeroDuration();
  // grpc::Server::Shutdown and Wait are safe to call again and from several threads (a signal
  // thread and the destructor), so server_ stays until the RpcServer goes.
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(grace));
  server_->Wait();
  if (!stopped_.exchange(true)) QTRAIN_LOG(INFO) << "stopped serving on " << address_;
}

absl::Status WriteAddressFile(const std::string& path, const std::string& address) {
  QTRAIN_RETURN_IF_ERROR(SplitHostPort(address).status());
  absl::Status status = WriteFileAtomically(path, absl::StrCat(address, "\n"));
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("cannot write the address file: ", status.message()));
  }
  return absl::OkStatus();
}

}  // namespace qtrain
