#include "common/signal_pipe.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

TEST(SignalPipeTest, DeliversEachSignalInOrderAndTimesOut) {
  absl::StatusOr<std::unique_ptr<SignalPipe>> pipe = SignalPipe::Install();
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  EXPECT_EQ((*pipe)->Wait(absl::Milliseconds(20)), std::nullopt);
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  EXPECT_EQ((*pipe)->Wait(absl::Seconds(5)), SIGTERM);
  EXPECT_EQ((*pipe)->Wait(absl::Seconds(5)), SIGINT);
  const absl::Time start = absl::Now();
  EXPECT_EQ((*pipe)->Wait(absl::Milliseconds(100)), std::nullopt);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
}

// The case a blocked mask gets wrong: the signal goes to a thread that was started before and
// blocks nothing (as a library's thread pool does). The process lives and the signal arrives.
TEST(SignalPipeTest, ASignalTakenByAnotherThreadStillArrives) {
  std::atomic<bool> stop{false};
  std::thread early([&stop] {
    while (!stop) absl::SleepFor(absl::Milliseconds(1));
  });
  absl::StatusOr<std::unique_ptr<SignalPipe>> pipe = SignalPipe::Install();
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  // Blocked here, the kernel must hand them to `early`.
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &term, &old), 0);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
    EXPECT_EQ((*pipe)->Wait(absl::Seconds(5)), SIGTERM) << i;
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  stop = true;
  early.join();
}

TEST(SignalPipeTest, OneAtATimeAndThePreviousHandlerComesBack) {
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction before;
  ASSERT_EQ(::sigaction(SIGINT, &ignore, &before), 0);
  {
    absl::StatusOr<std::unique_ptr<SignalPipe>> pipe = SignalPipe::Install({SIGINT});
    ASSERT_TRUE(pipe.ok()) << pipe.status();
    absl::StatusOr<std::unique_ptr<SignalPipe>> second = SignalPipe::Install({SIGINT});
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    ::raise(SIGINT);  // left unread: the next SignalPipe must not see it
  }
  struct sigaction now;
  ASSERT_EQ(::sigaction(SIGINT, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  absl::StatusOr<std::unique_ptr<SignalPipe>> again = SignalPipe::Install({SIGINT});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->Wait(absl::Milliseconds(50)), std::nullopt);
  again->reset();
  ::sigaction(SIGINT, &before, nullptr);
}

TEST(SignalPipeTest, RefusesSignalsThatCannotBeHandled) {
  for (int signal : {SIGKILL, SIGSTOP, 0, -1, NSIG}) {
    absl::StatusOr<std::unique_ptr<SignalPipe>> pipe = SignalPipe::Install({SIGTERM, signal});
    EXPECT_EQ(pipe.status().code(), absl::StatusCode::kInvalidArgument) << signal;
  }
  // Nothing was left installed by the refusals.
  EXPECT_TRUE(SignalPipe::Install().ok());
}

// Between fork and exec a child still has the handler; its signals are not the parent's.
TEST(SignalPipeTest, AForkedChildsSignalIsNotThePipeOwners) {
  absl::StatusOr<std::unique_ptr<SignalPipe>> pipe = SignalPipe::Install();
  ASSERT_TRUE(pipe.ok()) << pipe.status();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::raise(SIGTERM);
    ::_exit(7);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 7);
  EXPECT_EQ((*pipe)->Wait(absl::Milliseconds(100)), std::nullopt);
}

}  // namespace
}  // namespace qtrain
