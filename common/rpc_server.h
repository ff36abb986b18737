// Starting a qtrain gRPC server: the listen address (port 0 picks one), security
// (rpc_security.h), message size limits, grpc.health.v1 and server reflection.
//
//   QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<RpcServer> server,
//                           RpcServer::Start(options, {&job_service, &worker_service}));
//   server->SetServing(true);  // health: NOT_SERVING until then
//   QTRAIN_RETURN_IF_ERROR(WriteAddressFile(path, server->address()));
#ifndef QTRAIN_COMMON_RPC_SERVER_H_
#define QTRAIN_COMMON_RPC_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc_security.h"
#include "grpcpp/impl/service_type.h"
#include "grpcpp/server.h"
#include "prometheus/registry.h"

namespace qtrain {

struct RpcServerOptions {
  std::string listen = "127.0.0.1:0";
  ServerSecurityOptions security;  // .listen is filled from `listen`
  // Larger requests are refused with RESOURCE_EXHAUSTED by gRPC before any handler runs.
  int max_receive_message_bytes = 16 << 20;
  int max_send_message_bytes = 64 << 20;
  // When set, every call is counted and timed on it (rpc_metrics.h: qtrain_rpc_total,
  // qtrain_rpc_seconds).
  std::shared_ptr<prometheus::Registry> metrics;
};

class RpcServer {
 public:
  // Binds and starts serving `services` (not owned; they must outlive the server). Errors:
  // what ServerSecurity::Load returns; UNAVAILABLE when the address cannot be bound (naming it).
  static absl::StatusOr<std::unique_ptr<RpcServer>> Start(
      const RpcServerOptions& options, const std::vector<grpc::Service*>& services);
  ~RpcServer();  // Shutdown()

  // "HOST:PORT" with the port actually bound.
  const std::string& address() const { return address_; }
  const ServerSecurity& security() const { return security_; }
  // The overall health status (service "") and that of every registered service.
  void SetServing(bool serving);
  // Stops accepting calls and waits up to `grace` for running ones, then cancels them.
  void Shutdown(absl::Duration grace = absl::Seconds(2));

 private:
  RpcServer() = default;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> service_names_;
  std::string address_;
  ServerSecurity security_;
  std::atomic<bool> stopped_{false};  // logged once, whichever thread shuts down
};

// Writes "HOST:PORT\n" to `path` atomically (readers never see a partial address).
absl::Status WriteAddressFile(const std::string& path, const std::string& address);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RPC_SERVER_H_
