// The one place where gRPC and absl statuses are converted. Codes map one to one (both follow
// the canonical google.rpc.Code numbering); messages are kept.
#ifndef QTRAIN_COMMON_GRPC_STATUS_H_
#define QTRAIN_COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace qtrain {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_GRPC_STATUS_H_
