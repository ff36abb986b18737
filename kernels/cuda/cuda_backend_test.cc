// The CUDA backend where CI runs (no GPU): creating it fails with an error that says why, and
// nothing else is touched. On a machine with a GPU the same test runs the quick conformance
// suite on it.
#include "kernels/cuda/cuda_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>

#include "kernels/conformance/conformance.h"

namespace qtrain::kernels::cuda {
namespace {

using ::testing::HasSubstr;

TEST(CudaBackendTest, WithoutAGpuCreationSaysSo) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "this machine has a GPU (see the next test)";
  std::unique_ptr<Backend> backend;
  const OpStatus created = CreateCudaBackend({}, &backend);
  EXPECT_FALSE(created.ok());
  EXPECT_THAT(created.message(), HasSubstr("CUDA backend: no CUDA device"));
  EXPECT_EQ(backend, nullptr);
}

TEST(CudaBackendTest, ADeviceThatDoesNotExistIsNamed) {
  std::unique_ptr<Backend> backend;
  const OpStatus created = CreateCudaBackend({.device = CudaDeviceCount() + 3}, &backend);
  EXPECT_FALSE(created.ok());
  EXPECT_EQ(backend, nullptr);
  if (CudaDeviceCount() > 0) {
    EXPECT_THAT(created.message(), HasSubstr("does not exist"));
  }
  EXPECT_FALSE(CreateCudaBackend({}, nullptr).ok());
}

TEST(CudaBackendTest, OnAGpuEveryOpConformsToTheReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no GPU here (tests/gpu/run.sh runs this suite)";
  std::unique_ptr<Backend> backend;
  const OpStatus created = CreateCudaBackend({}, &backend);
  ASSERT_TRUE(created.ok()) << created.message();
  EXPECT_EQ(backend->name(), "cuda");
  const std::vector<ConformanceCase> cases = RunConformance(*backend, {.quick = true});
  int failed = 0;
  for (const ConformanceCase& c : cases) failed += c.passed ? 0 : 1;
  EXPECT_EQ(failed, 0) << FormatConformanceReport(cases);
}

}  // namespace
}  // namespace qtrain::kernels::cuda
