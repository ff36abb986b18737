// The CUDA plugin's loader: a missing or foreign module is a clear error naming the paths, and
// where the build has the plugin, loading it on a machine without a GPU says so (with one, it
// makes a backend that runs an op). Each test runs in its own process (the module stays loaded).
#include "worker/train/cuda_plugin.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class CudaPluginTest : public ::testing::Test {
 protected:
  void TearDown() override { unsetenv("QTRAIN_CUDA_PLUGIN"); }
};

TEST_F(CudaPluginTest, ANamedPluginIsTheOnlyCandidate) {
  setenv("QTRAIN_CUDA_PLUGIN", "/nonexistent/libqtrain_cuda_plugin.so", 1);
  EXPECT_EQ(CudaPluginCandidates(),
            std::vector<std::string>{"/nonexistent/libqtrain_cuda_plugin.so"});
  const auto backend = LoadCudaPluginBackend();
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(backend.status().message(),
              HasSubstr("tried /nonexistent/libqtrain_cuda_plugin.so (absent)"));
  EXPECT_THAT(backend.status().message(), HasSubstr("qtrain-worker --device cuda"));
  unsetenv("QTRAIN_CUDA_PLUGIN");
  // Unset: beside the program, then the installed layout.
  const std::vector<std::string> candidates = CudaPluginCandidates();
  ASSERT_EQ(candidates.size(), 2u);
  EXPECT_THAT(candidates[0], ::testing::EndsWith("/libqtrain_cuda_plugin.so"));
  EXPECT_THAT(candidates[1], ::testing::EndsWith("/lib/qtrain/libqtrain_cuda_plugin.so"));
}

TEST_F(CudaPluginTest, AFileThatIsNoModuleIsRefusedWithTheLoadersReason) {
  const fs::path fake = fs::path(::testing::TempDir()) / "not_a_plugin.so";
  std::ofstream(fake) << "not an ELF file\n";
  setenv("QTRAIN_CUDA_PLUGIN", fake.c_str(), 1);
  const auto backend = LoadCudaPluginBackend();
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(backend.status().message(), HasSubstr(fake.string() + " ("));
  fs::remove(fake);
  EXPECT_EQ(LoadCudaPluginBackend(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

#ifdef QTRAIN_CUDA_PLUGIN_FILE
TEST_F(CudaPluginTest, TheBuiltPluginMakesABackendOrSaysWhyNot) {
  const std::string plugin = QTRAIN_CUDA_PLUGIN_FILE;
  setenv("QTRAIN_CUDA_PLUGIN", plugin.c_str(), 1);
  auto backend = LoadCudaPluginBackend();
  if (!backend.ok()) {
    // No GPU here: the module loaded and its CUDA code answered.
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(backend.status().message(), HasSubstr("the CUDA driver sees no GPU"));
    EXPECT_THAT(backend.status().message(), HasSubstr("(plugin " + plugin + ")"));
    return;
  }
  // A GPU: the backend runs an op and copies its result back.
  kernels::Backend& be = **backend;
  EXPECT_EQ(be.name(), "cuda");
  float* x = static_cast<float*>(be.Alloc(4 * sizeof(float)));
  ASSERT_NE(x, nullptr);
  ASSERT_TRUE(be.Fill(x, 4, 2.5f).ok());
  float host[4] = {0, 0, 0, 0};
  ASSERT_TRUE(be.CopyBackendToHost(host, x, sizeof(host)).ok());
  EXPECT_EQ(host[3], 2.5f);
  be.Free(x);
}
#endif

}  // namespace
}  // namespace qtrain::train
