// The process guards of the service harness, on plain shell processes: what they start is gone
// when they are destroyed, children included, and a child is found through /proc.
#include "tests/integration/service_harness.h"

#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::testing_service {
namespace {

namespace fs = std::filesystem;

TEST(ServiceHarnessTest, ProcessIsKilledAndReapedWhenDestroyed) {
  const fs::path log = fs::path(::testing::TempDir()) / "sleep.log";
  ProcessId id;
  {
    absl::StatusOr<std::unique_ptr<Process>> process = Process::Spawn(
        {"/bin/sh", "-c", "echo started; echo $OMP_NUM_THREADS; exec sleep 60"}, {}, log);
    ASSERT_TRUE(process.ok()) << process.status();
    ASSERT_TRUE(WaitFor([&] { return (*process)->Log().find("started") != std::string::npos; },
                        absl::Seconds(10)));
    EXPECT_THAT((*process)->Log(), ::testing::HasSubstr("started\n1\n"));
    const std::vector<ProcessId> children = ChildrenOf(::getpid());
    for (const ProcessId& child : children) {
      if (child.pid == (*process)->pid()) id = child;
    }
    ASSERT_EQ(id.pid, (*process)->pid());
    EXPECT_TRUE(IsAlive(id));
    EXPECT_FALSE((*process)->Poll());
  }
  EXPECT_FALSE(IsAlive(id));
}

TEST(ServiceHarnessTest, WaitReportsTheExitStatusAndEnvironmentOverrides) {
  absl::StatusOr<std::unique_ptr<Process>> process = Process::Spawn(
      {"/bin/sh", "-c", "echo $OMP_NUM_THREADS $EXTRA; exit 3"}, {"OMP_NUM_THREADS=2", "EXTRA=yes"},
      fs::path(::testing::TempDir()) / "exit.log");
  ASSERT_TRUE(process.ok());
  const std::optional<int> status = (*process)->Wait(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 3);
  EXPECT_EQ((*process)->DescribeStatus(), "exit code 3");
  EXPECT_EQ((*process)->Log(), "2 yes\n");
  EXPECT_FALSE((*process)->Signal(SIGTERM)) << "a reaped process gets no signal";
}

TEST(ServiceHarnessTest, KillAllProcessesEndsTheirChildrenToo) {
  absl::StatusOr<std::unique_ptr<Process>> process =
      Process::Spawn({"/bin/sh", "-c", "sleep 60 & echo forked; wait"}, {},
                     fs::path(::testing::TempDir()) / "tree.log");
  ASSERT_TRUE(process.ok());
  std::vector<ProcessId> children;
  ASSERT_TRUE(WaitFor(
      [&] {
        children = ChildrenOf((*process)->pid());
        return !children.empty();
      },
      absl::Seconds(10)));
  ASSERT_EQ(children.size(), 1u);
  EXPECT_TRUE(IsAlive(children[0]));
  KillAllProcesses();
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(children[0]); }, absl::Seconds(5)));
  ASSERT_TRUE((*process)->Wait(absl::Seconds(5)).has_value());
  EXPECT_EQ((*process)->DescribeStatus(), "killed by signal 9 (Killed)");
}

TEST(ServiceHarnessDeathTest, WatchdogEndsAHungTestWithItsLogs) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        auto process = Process::Spawn({"/bin/sh", "-c", "echo hung here; exec sleep 60"}, {},
                                      fs::path(::testing::TempDir()) / "hung.log");
        WaitFor([&] { return (*process)->Log().find("hung") != std::string::npos; },
                absl::Seconds(10));
        Watchdog watchdog(absl::Milliseconds(200));
        absl::SleepFor(absl::Seconds(30));
      },
      ::testing::ExitedWithCode(1), "TEST TIMED OUT(.|\n)*hung here");
}

TEST(ServiceHarnessTest, WatchdogThatIsDestroyedInTimeDoesNothing) {
  { Watchdog watchdog(absl::Milliseconds(100)); }
  absl::SleepFor(absl::Milliseconds(300));
  SUCCEED();
}

TEST(ServiceHarnessTest, ProtoJsonHelpers) {
  const nlohmann::json job = nlohmann::json::parse(
      R"({"name": "jobs/demo-1", "state": "JOB_STATE_RUNNING", "restarts": "2", "round": 3})");
  EXPECT_EQ(JobId(job), "demo-1");
  EXPECT_EQ(JobState(job), "JOB_STATE_RUNNING");
  EXPECT_EQ(JsonInt(job, "restarts"), 2);
  EXPECT_EQ(JsonInt(job, "round"), 3);
  EXPECT_EQ(JsonInt(job, "missing"), 0);
  EXPECT_FALSE(IsTerminal("JOB_STATE_RUNNING"));
  EXPECT_TRUE(IsTerminal("JOB_STATE_CANCELLED"));
}

TEST(ServiceHarnessTest, CoordinatorThatCannotStartIsAnError) {
  CoordinatorOptions options;
  const fs::path root = fs::path(::testing::TempDir()) / "no_coordinator";
  options.state_dir = root / "state";
  options.run_root = root / "runs";
  options.log_dir = root / "logs";
  options.extra_flags = {"--no-such-flag"};
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start(options);
  EXPECT_FALSE(coordinator.ok());
}

}  // namespace
}  // namespace qtrain::testing_service
