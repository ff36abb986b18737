#include "common/signal_pipe.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace qtrain {
namespace {

// The pipe is made once and never closed: a handler still running in another thread while a
// SignalPipe goes away must not write into a descriptor number that was reused meanwhile.
std::atomic<int> g_read_fd{-1};
std::atomic<int> g_write_fd{-1};
std::atomic<pid_t> g_owner{0};  // 0 while no SignalPipe is installed

void OnSignal(int signal) {
  const int saved_errno = errno;  // the interrupted code may be about to read it
  const int fd = g_write_fd.load(std::memory_order_relaxed);
  if (fd >= 0 && g_owner.load(std::memory_order_relaxed) == ::getpid()) {
    const unsigned char byte = static_cast<unsigned char>(signal);
    [[maybe_unused]] ssize_t n = ::write(fd, &byte, 1);  // a full pipe drops it: EAGAIN
  }
  errno = saved_errno;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SignalPipe>> SignalPipe::Install(std::vector<int> signals) {
  for (int signal : signals) {
    if (signal <= 0 || signal >= NSIG || signal == SIGKILL || signal == SIGSTOP) {
      return absl::InvalidArgumentError(absl::StrCat("signal ", signal, " cannot be handled"));
    }
  }
  pid_t none = 0;
  if (!g_owner.compare_exchange_strong(none, ::getpid())) {
    return absl::FailedPreconditionError("a SignalPipe is already installed in this process");
  }
  if (g_write_fd.load() < 0) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
      const int err = errno;
      g_owner.store(0);
      return absl::InternalError(absl::StrCat("pipe: ", std::strerror(err)));
    }
    g_read_fd.store(fds[0]);
    g_write_fd.store(fds[1]);
  }
  const int read_fd = g_read_fd.load();
  unsigned char stale;
  while (::read(read_fd, &stale, 1) == 1) {  // signals of an earlier SignalPipe's last moments
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  std::vector<struct sigaction> previous(signals.size());
  for (size_t i = 0; i < signals.size(); ++i) {
    if (::sigaction(signals[i], &action, &previous[i]) != 0) {
      const int err = errno;
      for (size_t j = 0; j < i; ++j) ::sigaction(signals[j], &previous[j], nullptr);
      g_owner.store(0);
      return absl::InternalError(absl::StrCat("sigaction(", signals[i], "): ", std::strerror(err)));
    }
  }
  return std::unique_ptr<SignalPipe>(
      new SignalPipe(read_fd, std::move(signals), std::move(previous)));
}

SignalPipe::SignalPipe(int read_fd, std::vector<int> signals,
                       std::vector<struct sigaction> previous)
    : read_fd_(read_fd), signals_(std::move(signals)), previous_(std::move(previous)) {}

SignalPipe::~SignalPipe() {
  for (size_t i = 0; i < signals_.size(); ++i) ::sigaction(signals_[i], &previous_[i], nullptr);
  g_owner.store(0);
}

std::optional<int> SignalPipe::Wait(absl::Duration timeout) {
  const absl::Time deadline =
      timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  while (true) {
    unsigned char byte = 0;
    const ssize_t n = ::read(read_fd_, &byte, 1);
    if (n == 1) return static_cast<int>(byte);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return std::nullopt;
    int wait_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return std::nullopt;
      wait_ms = static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
    }
    struct pollfd p = {read_fd_, POLLIN, 0};
    ::poll(&p, 1, wait_ms);
  }
}

}  // namespace qtrain
