#include "worker/train/metrics_log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class MetricsLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("metrics_log_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(MetricsLogTest, ReadAllSkipsTornLinesAndMissingFileIsEmpty) {
  const std::string path = dir_ / "metrics.jsonl";
  auto none = MetricsLog::ReadAll(path);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  ASSERT_TRUE(
      WriteFileAtomically(path, "{\"step\": 1}\n\n{\"step\": 2, \"loss\": 3}\nnot json\n{\"ste")
          .ok());
  auto records = MetricsLog::ReadAll(path);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[1]["loss"], 3);
}

// A metrics.jsonl that is a FIFO would block the resume forever.
TEST_F(MetricsLogTest, ReadAllRefusesFifosAndDirectories) {
  const std::string fifo = dir_ / "metrics.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ::alarm(20);  // a blocked open fails the test instead of hanging it
  const absl::Status fifo_status = MetricsLog::ReadAll(fifo).status();
  ::alarm(0);
  EXPECT_EQ(fifo_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fifo_status.message(), HasSubstr("is a FIFO, not a regular file"));
  EXPECT_THAT(MetricsLog::ReadAll(dir_).status().message(), HasSubstr("is a directory"));
  EXPECT_EQ(MetricsLog::Open(fifo, 0).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace qtrain::train
