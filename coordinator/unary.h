// Every unary callback handler in one function: the realm check, the call, the status.
#ifndef QTRAIN_COORDINATOR_UNARY_H_
#define QTRAIN_COORDINATOR_UNARY_H_

#include <utility>

#include "absl/status/statusor.h"
#include "common/grpc_status.h"
#include "common/rpc_security.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"

namespace qtrain::coordinator {

// Runs `call()` (returning absl::StatusOr<Response> or absl::Status) after the token check
// and finishes the RPC with its result.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                   const ServerSecurity& security, Realm realm, Response* response,
                                   Call&& call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status auth = security.Check(*context, realm); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  auto result = call();
  if constexpr (std::is_same_v<decltype(result), absl::Status>) {
    reactor->Finish(ToGrpcStatus(result));
  } else {
    if (result.ok()) *response = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  }
  return reactor;
}

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_UNARY_H_
