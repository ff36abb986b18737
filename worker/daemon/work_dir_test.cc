#include "worker/daemon/work_dir.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::worker {
namespace {

using ::testing::HasSubstr;

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(WorkDirTest, CreatesTheDirectoryAndLocksIt) {
  const std::string dir = FreshDir("wd_lock");
  absl::StatusOr<WorkDir> first = WorkDir::Open(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(std::filesystem::is_directory(dir + "/assignments"));
  EXPECT_EQ(first->AssignmentPath("a.json"), dir + "/assignments/a.json");

  absl::StatusOr<WorkDir> second = WorkDir::Open(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().ToString(),
              HasSubstr(absl::StrCat("in use by qtrain-worker process ", ::getpid())));

  *first = std::move(*WorkDir::Open(FreshDir("wd_other")));  // releases dir's lock
  EXPECT_TRUE(WorkDir::Open(dir).ok());
}

TEST(WorkDirTest, RefusesAFileAsDirectory) {
  const std::string path = FreshDir("wd_file");
  std::ofstream(path) << "x";
  absl::StatusOr<WorkDir> wd = WorkDir::Open(path);
  ASSERT_FALSE(wd.ok());
  EXPECT_THAT(wd.status().ToString(), HasSubstr("not a directory"));
}

TEST(WorkDirTest, KeepsTheWorkerId) {
  const std::string dir = FreshDir("wd_id");
  {
    absl::StatusOr<WorkDir> wd = WorkDir::Open(dir);
    ASSERT_TRUE(wd.ok());
    absl::StatusOr<std::optional<std::string>> none = wd->ReadWorkerId();
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value());
    ASSERT_TRUE(wd->WriteWorkerId("host-a-3").ok());
  }
  absl::StatusOr<WorkDir> again = WorkDir::Open(dir);
  ASSERT_TRUE(again.ok());
  absl::StatusOr<std::optional<std::string>> id = again->ReadWorkerId();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->value_or(""), "host-a-3");
}

TEST(WorkDirTest, RefusesBadWorkerIds) {
  const std::string dir = FreshDir("wd_bad");
  absl::StatusOr<WorkDir> wd = WorkDir::Open(dir);
  ASSERT_TRUE(wd.ok());
  EXPECT_EQ(wd->WriteWorkerId("Bad/Id").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wd->WriteWorkerId("").code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(dir + "/worker_id") << "not an id!\n";
  absl::StatusOr<std::optional<std::string>> id = wd->ReadWorkerId();
  ASSERT_FALSE(id.ok());
  EXPECT_THAT(id.status().ToString(), HasSubstr(dir + "/worker_id"));
  EXPECT_TRUE(IsValidWorkerId("a-1"));
  EXPECT_FALSE(IsValidWorkerId(std::string(129, 'a')));
}

}  // namespace
}  // namespace qtrain::worker
