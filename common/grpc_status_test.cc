#include "common/grpc_status.h"

#include "gtest/gtest.h"

namespace qtrain {
namespace {

TEST(GrpcStatusTest, EveryCodeRoundTrips) {
  for (int code = 0; code <= 16; ++code) {
    const absl::Status original(static_cast<absl::StatusCode>(code), code == 0 ? "" : "why");
    const grpc::Status converted = ToGrpcStatus(original);
    EXPECT_EQ(static_cast<int>(converted.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(converted), original);
  }
}

TEST(GrpcStatusTest, KeepsTheMessage) {
  const grpc::Status s =
      ToGrpcStatus(absl::InvalidArgumentError("curriculum[0].seq_len: required"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "curriculum[0].seq_len: required");
}

}  // namespace
}  // namespace qtrain
