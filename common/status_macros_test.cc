#include "common/status_macros.h"

#include "gtest/gtest.h"

namespace qtrain {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  QTRAIN_ASSIGN_OR_RETURN(int half, Half(x));
  QTRAIN_ASSIGN_OR_RETURN(half, Half(half));  // reassigning an existing variable
  return half;
}

absl::Status CheckEven(int x) {
  QTRAIN_RETURN_IF_ERROR(Half(x).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(3).message(), "odd");
}

TEST(StatusMacrosTest, AnnotatePrefixesMessageAndKeepsCode) {
  const absl::Status s = Annotate(absl::NotFoundError("no file"), "loading weights");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "loading weights: no file");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "x").ok());
}

}  // namespace
}  // namespace qtrain
