// Reading a model directory's files: the directory and each file must be what they claim to be;
// a FIFO in place of a file is refused instead of waited on.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/config.h"
#include "worker/model/init.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string SavedModel(const std::string& name) {
  const std::string dir =
      ::testing::TempDir() + "/checkpoint_files_" + std::to_string(::getpid()) + "_" + name;
  fs::remove_all(dir);
  ModelConfig config = *PresetConfig("qwen2-test");
  const ParameterLayout layout(config);
  std::vector<float> params(layout.total_size());
  InitializeParameters(config, layout, 1, params);
  EXPECT_TRUE(SaveCheckpoint(dir, config, params).ok());
  return dir;
}

TEST(CheckpointFilesTest, ModelDirectoryMustBeADirectory) {
  const absl::Status empty = LoadCheckpoint("").status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.message(), HasSubstr("model directory name is empty"));
  const std::string dir = SavedModel("not_dir");
  EXPECT_THAT(LoadConfig(dir + "/config.json").status().message(),
              HasSubstr("config.json is a regular file, not a directory"));
  EXPECT_THAT(LoadConfig("/dev/null").status().message(),
              HasSubstr("/dev/null is a character device, not a directory"));
  EXPECT_EQ(LoadConfig(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
  fs::remove_all(dir);
}

TEST(CheckpointFilesTest, FifoInPlaceOfAFileIsRefusedWithoutBlocking) {
  for (const std::string name :
       {"config.json", "model.safetensors", "model.safetensors.index.json"}) {
    SCOPED_TRACE(name);
    const std::string dir = SavedModel("fifo");
    fs::remove(dir + "/" + name);
    ASSERT_EQ(::mkfifo((dir + "/" + name).c_str(), 0644), 0);
    ::alarm(20);  // a blocked open fails the test instead of hanging it
    const absl::Status status = LoadCheckpoint(dir).status();
    ::alarm(0);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(status.message(), HasSubstr(name + " is a FIFO, not a regular file"));
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace qtrain::model
