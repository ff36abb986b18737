#include "worker/daemon/child_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<ChildProcess> SpawnShell(const std::string& script,
                                         std::vector<std::string> env = {}) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"/bin/sh", "-c", script}, .env = std::move(env)});
  EXPECT_TRUE(child.ok()) << child.status();
  return child.ok() ? std::move(*child) : nullptr;
}

// Reads lines until `count` arrived or the output ended (at most `timeout`).
std::vector<std::string> ReadAtLeast(ChildProcess& child, size_t count,
                                     absl::Duration timeout = absl::Seconds(10)) {
  std::vector<std::string> lines;
  const absl::Time deadline = absl::Now() + timeout;
  while (lines.size() < count && absl::Now() < deadline) {
    absl::StatusOr<bool> open = child.ReadLines(&lines);
    if (!open.ok() || !*open) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return lines;
}

// Gone: no such process, or a zombie that is no longer ours to reap.
bool IsGone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = content.rfind(')');
  return paren == std::string::npos || content.size() < paren + 3 || content[paren + 2] == 'Z' ||
         content[paren + 2] == 'X';
}

bool WaitGone(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!IsGone(pid)) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// Not a child of ours any more (reaped): no zombie left behind.
bool NotOurChild(pid_t pid) {
  int status;
  return ::waitpid(pid, &status, WNOHANG) < 0 && errno == ECHILD;
}

TEST(ChildProcessTest, TalksThroughStdinAndStdout) {
  auto child = SpawnShell("read x; echo \"got $x\"; printf 'two\\nthree'");
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(child->WriteLine("hello").ok());
  std::vector<std::string> lines = ReadAtLeast(*child, 3);
  EXPECT_THAT(lines, ElementsAre("got hello", "two", "three"));
  std::optional<ExitStatus> status = child->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success());
  EXPECT_EQ(status->Describe(), "exited with 0");
  EXPECT_TRUE(NotOurChild(child->pid()));
}

TEST(ChildProcessTest, AddsEnvironment) {
  auto child = SpawnShell("echo \"$QTRAIN_CHILD_TEST_VAR\"", {"QTRAIN_CHILD_TEST_VAR=yes"});
  ASSERT_NE(child, nullptr);
  EXPECT_THAT(ReadAtLeast(*child, 1), ElementsAre("yes"));
}

TEST(ChildProcessTest, DescribesExitStatus) {
  auto exits = SpawnShell("exit 3");
  ASSERT_NE(exits, nullptr);
  std::optional<ExitStatus> a = exits->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->Describe(), "exited with 3");
  EXPECT_FALSE(a->success());

  auto killed = SpawnShell("kill -9 $$");
  ASSERT_NE(killed, nullptr);
  std::optional<ExitStatus> b = killed->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(b.has_value());
  EXPECT_FALSE(b->exited);
  EXPECT_EQ(b->signal, SIGKILL);
  EXPECT_THAT(b->Describe(), HasSubstr("killed by signal 9"));
}

TEST(ChildProcessTest, MissingProgramIsAnError) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child =
      ChildProcess::Spawn({.argv = {"/nonexistent/program"}});
  ASSERT_FALSE(child.ok());
  EXPECT_THAT(child.status().ToString(), HasSubstr("cannot start /nonexistent/program"));
  EXPECT_FALSE(ChildProcess::Spawn({}).ok());
}

TEST(ChildProcessTest, TerminateKillsAChildThatIgnoresSigterm) {
  auto child = SpawnShell("trap '' TERM; echo ready; while :; do sleep 0.05; done");
  ASSERT_NE(child, nullptr);
  ASSERT_THAT(ReadAtLeast(*child, 1), ElementsAre("ready"));
  const absl::Time start = absl::Now();
  ExitStatus status = child->Terminate(absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Milliseconds(300) + absl::Seconds(1));
  EXPECT_FALSE(status.exited);
  EXPECT_EQ(status.signal, SIGKILL);
  EXPECT_TRUE(NotOurChild(child->pid()));
}

TEST(ChildProcessTest, TerminateStopsAChildThatObeysSigterm) {
  auto child = SpawnShell("echo ready; exec sleep 100");
  ASSERT_NE(child, nullptr);
  ASSERT_THAT(ReadAtLeast(*child, 1), ElementsAre("ready"));
  const absl::Time start = absl::Now();
  ExitStatus status = child->Terminate(absl::Seconds(5));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(status.signal, SIGTERM);
}

TEST(ChildProcessTest, TerminateKillsTheWholeGroup) {
  // The grandchild ignores SIGTERM and outlives the leader unless the group is killed.
  auto child = SpawnShell("(trap '' TERM; exec sleep 100) & echo $!; wait");
  ASSERT_NE(child, nullptr);
  std::vector<std::string> lines = ReadAtLeast(*child, 1);
  ASSERT_EQ(lines.size(), 1u);
  int grandchild = 0;
  ASSERT_TRUE(absl::SimpleAtoi(lines[0], &grandchild)) << lines[0];
  ASSERT_FALSE(IsGone(grandchild));
  child->Terminate(absl::Milliseconds(200));
  EXPECT_TRUE(WaitGone(grandchild, absl::Seconds(2)));
}

TEST(ChildProcessTest, DiesWithItsParent) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t middle = ::fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    ::close(fds[0]);
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Spawn({.argv = {"/bin/sleep", "100"}});
    const pid_t pid = child.ok() ? (*child)->pid() : -1;
    [[maybe_unused]] ssize_t n = ::write(fds[1], &pid, sizeof(pid));
    ::pause();
    ::_exit(0);
  }
  ::close(fds[1]);
  pid_t child = -1;
  ASSERT_EQ(::read(fds[0], &child, sizeof(child)), static_cast<ssize_t>(sizeof(child)));
  ::close(fds[0]);
  ASSERT_GT(child, 0);
  ASSERT_FALSE(IsGone(child));
  ::kill(middle, SIGKILL);
  int status;
  ASSERT_EQ(::waitpid(middle, &status, 0), middle);
  EXPECT_TRUE(WaitGone(child, absl::Seconds(2)));
}

TEST(ChildProcessTest, DestructorLeavesNoProcess) {
  pid_t pid;
  {
    auto child = SpawnShell("trap '' TERM; exec sleep 100");
    ASSERT_NE(child, nullptr);
    pid = child->pid();
  }
  EXPECT_TRUE(NotOurChild(pid));
  EXPECT_TRUE(IsGone(pid));
}

TEST(ChildProcessTest, WritingToAnExitedChildIsAnError) {
  auto child = SpawnShell("exec 0<&-; exit 0");
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(child->WaitFor(absl::Seconds(10)).has_value());
  absl::Status status = child->WriteLine("ping");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

TEST(ChildProcessTest, WritingToAChildThatClosedStdinIsAnError) {
  auto child = SpawnShell("exec 0<&-; echo closed; exec sleep 100");
  ASSERT_NE(child, nullptr);
  ASSERT_THAT(ReadAtLeast(*child, 1), ElementsAre("closed"));
  // The daemon must survive this (no SIGPIPE).
  absl::Status status = child->WriteLine("ping");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  child->Terminate(absl::Seconds(1));
}

TEST(ChildProcessTest, RefusesOverlongLines) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Spawn(
      {.argv = {"/bin/sh", "-c", "printf '%0100d\\n' 0"}, .max_line_bytes = 10});
  ASSERT_TRUE(child.ok());
  std::vector<std::string> lines;
  absl::Status status;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    absl::StatusOr<bool> open = (*child)->ReadLines(&lines);
    if (!open.ok()) {
      status = open.status();
      break;
    }
    if (!*open) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
}

}  // namespace
}  // namespace qtrain::worker
