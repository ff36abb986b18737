#include "worker/train/training_backend.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

using ::testing::HasSubstr;

TEST(TrainingBackendTest, CpuIsAlwaysAvailableAndMeansTheCpuBackend) {
  EXPECT_TRUE(CheckTrainingDevice(v1::DEVICE_KIND_CPU).ok());
  EXPECT_TRUE(CheckTrainingDevice(v1::DEVICE_KIND_UNSPECIFIED).ok());
  auto backend = CreateTrainingBackend(v1::DEVICE_KIND_CPU);
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ(*backend, nullptr);
}

TEST(TrainingBackendTest, CudaIsAGpuBackendOrAClearError) {
  const absl::Status usable = CheckTrainingDevice(v1::DEVICE_KIND_CUDA);
  auto backend = CreateTrainingBackend(v1::DEVICE_KIND_CUDA);
  if (!usable.ok()) {
    // This machine (a CPU-only build, or no GPU): the reason, and no backend.
    EXPECT_EQ(usable.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(usable.message(),
                HasSubstr(BuiltWithCuda() ? "sees no GPU" : "this build has no CUDA backend"));
    EXPECT_EQ(backend.status(), usable);
    return;
  }
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_NE(*backend, nullptr);
  EXPECT_EQ((*backend)->name(), "cuda");
  EXPECT_EQ(CreateTrainingBackend(v1::DEVICE_KIND_CUDA, 4096).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(TrainingBackendTest, BadDeviceNumbersAreRefused) {
  EXPECT_EQ(CheckTrainingDevice(static_cast<v1::DeviceKind>(77)).code(),
            absl::StatusCode::kInvalidArgument);
  if (CheckTrainingDevice(v1::DEVICE_KIND_CUDA).ok()) {
    EXPECT_EQ(CreateTrainingBackend(v1::DEVICE_KIND_CUDA, -1).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace qtrain::train
