#include "common/run_dir_lock.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class RunDirLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) /
            absl::StrCat("run_dir_lock_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(RunDirLockTest, SecondHolderIsRefusedWithThePidUntilTheFirstReleases) {
  auto first = RunDirLock::Acquire(dir_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(fs::is_directory(dir_));
  EXPECT_EQ(ReadFileToString(dir_ + "/qtrain.lock").value(), absl::StrCat(::getpid(), "\n"));
  EXPECT_EQ(RunDirLock::HolderPid(dir_), ::getpid());

  auto second = RunDirLock::Acquire(dir_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      std::string(second.status().message()),
      HasSubstr(absl::StrCat("run directory ", dir_, " is in use by process ", ::getpid())));

  first->Release();
  EXPECT_FALSE(first->held());
  EXPECT_EQ(RunDirLock::HolderPid(dir_), std::nullopt);
  auto third = RunDirLock::Acquire(dir_);
  ASSERT_TRUE(third.ok()) << third.status();
  // A moved lock is still held; the moved-from one releases nothing.
  RunDirLock moved = std::move(*third);
  EXPECT_TRUE(moved.held());
  EXPECT_EQ(RunDirLock::Acquire(dir_).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RunDirLockTest, AnotherProcessSeesTheHolderAndTheLockDiesWithIt) {
  int to_parent[2], to_child[2];
  ASSERT_EQ(::pipe(to_parent), 0);
  ASSERT_EQ(::pipe(to_child), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto lock = RunDirLock::Acquire(dir_);
    const char ok = lock.ok() ? 'y' : 'n';
    (void)!::write(to_parent[1], &ok, 1);
    char c;
    (void)!::read(to_child[0], &c, 1);  // hold until told, then die without releasing
    ::_exit(0);
  }
  char ok = 0;
  ASSERT_EQ(::read(to_parent[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');
  auto refused = RunDirLock::Acquire(dir_);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr(absl::StrCat("in use by process ", child)));
  EXPECT_EQ(RunDirLock::HolderPid(dir_), child);
  (void)!::write(to_child[1], "x", 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  // The kernel released the lock with the process, even though it never called Release().
  EXPECT_TRUE(RunDirLock::Acquire(dir_).ok());
  for (int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) ::close(fd);
}

TEST_F(RunDirLockTest, ALockFileThatIsNotARegularFileIsRefused) {
  fs::create_directories(dir_ + "/qtrain.lock");
  auto lock = RunDirLock::Acquire(dir_);
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("is a directory"));
  fs::remove(dir_ + "/qtrain.lock");
  ASSERT_EQ(::mkfifo((dir_ + "/qtrain.lock").c_str(), 0644), 0);
  lock = RunDirLock::Acquire(dir_);
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr("is a FIFO"));
}

TEST_F(RunDirLockTest, ARunDirectoryThatIsAFileIsRefused) {
  std::ofstream(dir_) << "x";
  auto lock = RunDirLock::Acquire(dir_);
  EXPECT_EQ(lock.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(lock.status().message()), HasSubstr(dir_));
  fs::remove(dir_);
}

}  // namespace
}  // namespace qtrain
