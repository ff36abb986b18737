#include "worker/daemon/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace qtrain::worker {
namespace {

constexpr absl::Duration kPollStep = absl::Milliseconds(5);

absl::Status Errno(int err, absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// The parent's environment with `extra` entries added, replacing those of the same name.
std::vector<std::string> MergedEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    bool replaced = false;
    for (const std::string& x : extra) {
      const size_t eq = x.find('=');
      if (eq != std::string::npos && absl::StartsWith(entry, x.substr(0, eq + 1))) replaced = true;
    }
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Makes `fd` the descriptor `target` of the child (without close-on-exec). Only
// async-signal-safe calls: it runs between fork and exec.
bool MoveTo(int fd, int target) {
  if (fd == target) {
    const int flags = ::fcntl(fd, F_GETFD);
    return flags >= 0 && ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) == 0;
  }
  return ::dup2(fd, target) == target;
}

// The child side of Spawn, between fork and exec (async-signal-safe calls only). Never
// returns: exec or _exit(127) after writing errno to `error_fd`.
[[noreturn]] void ExecChild(pid_t parent, int stdin_fd, int stdout_fd, int error_fd, char** argv,
                            char** envp) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died before the line above: then nobody would ever kill us.
  if (::getppid() != parent) ::_exit(127);
  int err = 0;
  if (!MoveTo(stdin_fd, 0) || !MoveTo(stdout_fd, 1)) {
    err = errno;
  } else {
    // Ignored signals and the blocked mask survive exec: the child starts clean.
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argv[0], argv, envp);
    err = errno;
  }
  [[maybe_unused]] ssize_t ignored = ::write(error_fd, &err, sizeof(err));
  ::_exit(127);
}

}  // namespace

ExitStatus ExitStatus::FromWaitStatus(int wait_status) {
  ExitStatus s;
  if (WIFEXITED(wait_status)) {
    s.exited = true;
    s.exit_code = WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    s.signal = WTERMSIG(wait_status);
  }
  return s;
}

std::string ExitStatus::Describe() const {
  if (exited) return absl::StrCat("exited with ", exit_code);
  const char* name = ::strsignal(signal);
  return absl::StrCat("killed by signal ", signal,
                      name != nullptr ? absl::StrCat(" (", name, ")") : "");
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const ChildSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    return absl::InvalidArgumentError("child process: no program given");
  }
  std::vector<std::string> args = spec.argv;
  std::vector<std::string> env = MergedEnvironment(spec.env);
  std::vector<char*> argv = CStrings(args);
  std::vector<char*> envp = CStrings(env);

  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return Errno(errno, "pipe");
  ScopedFd in_read(in[0]), in_write(in[1]);
  if (::pipe2(out, O_CLOEXEC) != 0) return Errno(errno, "pipe");
  ScopedFd out_read(out[0]), out_write(out[1]);
  if (::pipe2(err, O_CLOEXEC) != 0) return Errno(errno, "pipe");
  ScopedFd err_read(err[0]), err_write(err[1]);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return Errno(errno, absl::StrCat("cannot start ", spec.argv[0]));
  if (pid == 0) {
    ExecChild(parent, in_read.get(), out_write.get(), err_write.get(), argv.data(), envp.data());
  }
  // Both sides set the group, so that it exists before either goes on.
  ::setpgid(pid, pid);
  in_read = ScopedFd();
  out_write = ScopedFd();
  err_write = ScopedFd();

  int exec_errno = 0;
  ssize_t n;
  do {
    n = ::read(err_read.get(), &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof(exec_errno))) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot start ", spec.argv[0], ": ", std::strerror(exec_errno)));
  }
  for (int fd : {in_write.get(), out_read.get()}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  return std::unique_ptr<ChildProcess>(
      new ChildProcess(pid, std::move(in_write), std::move(out_read), spec.max_line_bytes));
}

ChildProcess::~ChildProcess() {
  if (!reaped()) Terminate(absl::ZeroDuration());
}

absl::StatusOr<bool> ChildProcess::ReadLines(std::vector<std::string>* lines) {
  if (stdout_.get() < 0) return false;
  char buf[65536];
  while (true) {
    const ssize_t n = ::read(stdout_.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      return Errno(errno, "reading the child's output");
    }
    if (n == 0) {
      if (!partial_.empty()) lines->push_back(std::move(partial_));
      partial_.clear();
      stdout_ = ScopedFd();
      return false;
    }
    absl::string_view chunk(buf, static_cast<size_t>(n));
    while (!chunk.empty()) {
      const size_t nl = chunk.find('\n');
      const size_t take = nl == absl::string_view::npos ? chunk.size() : nl;
      if (partial_.size() + take > max_line_bytes_) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the child wrote a line longer than ", FormatByteLimit(max_line_bytes_)));
      }
      partial_.append(chunk.data(), take);
      if (nl == absl::string_view::npos) break;
      lines->push_back(std::move(partial_));
      partial_.clear();
      chunk.remove_prefix(nl + 1);
    }
  }
}

absl::Status ChildProcess::WriteLine(absl::string_view line, absl::Duration timeout) {
  if (stdin_.get() < 0) return absl::FailedPreconditionError("the child's stdin is closed");
  std::string data = absl::StrCat(line, "\n");
  // A closed pipe must be an EPIPE error, not a SIGPIPE that kills the daemon: block it in this
  // thread and swallow the one the failed write raises.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  sigset_t pending;
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE);

  absl::Status status;
  const absl::Time deadline = absl::Now() + timeout;
  absl::string_view rest = data;
  while (!rest.empty()) {
    const ssize_t n = ::write(stdin_.get(), rest.data(), rest.size());
    if (n >= 0) {
      rest.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE) {
      status = absl::FailedPreconditionError("the child closed its stdin");
      break;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      status = Errno(errno, "writing to the child");
      break;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      status = absl::DeadlineExceededError(
          absl::StrCat("the child did not read its stdin for ", absl::FormatDuration(timeout)));
      break;
    }
    pollfd p{stdin_.get(), POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
  }
  if (!was_pending) {
    const timespec zero{0, 0};
    while (sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  return status;
}

bool ChildProcess::LeaderExited() {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  while (::waitid(P_PID, pid_, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    if (errno != EINTR) return true;  // ECHILD: nothing left to wait for
  }
  return info.si_pid != 0;
}

ExitStatus ChildProcess::Reap() {
  // The leader is a zombie, so its pid (the group id) cannot have been reused yet.
  ::kill(-pid_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  exit_status_ = r == pid_ ? ExitStatus::FromWaitStatus(status) : ExitStatus{.signal = SIGKILL};
  stdin_ = ScopedFd();
  return *exit_status_;
}

std::optional<ExitStatus> ChildProcess::TryWait() {
  if (exit_status_) return exit_status_;
  if (!LeaderExited()) return std::nullopt;
  return Reap();
}

std::optional<ExitStatus> ChildProcess::WaitFor(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (std::optional<ExitStatus> s = TryWait()) return s;
    if (absl::Now() >= deadline) return std::nullopt;
    absl::SleepFor(kPollStep);
  }
}

void ChildProcess::SignalGroup(int sig) {
  if (!exit_status_) ::kill(-pid_, sig);
}

ExitStatus ChildProcess::Terminate(absl::Duration grace) {
  if (exit_status_) return *exit_status_;
  if (!LeaderExited()) {
    ::kill(-pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    while (!LeaderExited() && absl::Now() < deadline) absl::SleepFor(kPollStep);
    if (!LeaderExited()) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);  // in case it left its group
      while (!LeaderExited()) absl::SleepFor(absl::Milliseconds(1));
    }
  }
  return Reap();
}

}  // namespace qtrain::worker
