#include "cli/local_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/file_util.h"

namespace qtrain::cli {

absl::StatusOr<pid_t> SpawnLogged(const std::vector<std::string>& argv,
                                  const std::string& log_path) {
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the log ", log_path, ": ", std::strerror(errno)));
  }
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    ::close(log_fd);
    return absl::InternalError(absl::StrCat("cannot open /dev/null: ", std::strerror(errno)));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::string exec_failed = absl::StrCat("qtrain: cannot run ", argv[0], "\n");
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the parent died already
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGPIPE, &dfl, nullptr);  // qtrain ignores it; exec keeps ignored signals
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execv(args[0], args.data());
    [[maybe_unused]] ssize_t n = ::write(2, exec_failed.data(), exec_failed.size());
    ::_exit(127);
  }
  const int fork_errno = errno;
  ::close(log_fd);
  ::close(null_fd);
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(fork_errno)));
  return pid;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")");
  }
  return absl::StrCat("wait status ", status);
}

std::string LogTail(const std::string& path, int lines) {
  absl::StatusOr<std::string> text = ReadFileToString(path, size_t{64} << 20);
  if (!text.ok()) return absl::StrCat("(cannot read ", path, ": ", text.status().message(), ")");
  std::vector<absl::string_view> all = absl::StrSplit(*text, '\n', absl::SkipEmpty());
  const size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  std::vector<absl::string_view> tail(all.begin() + static_cast<std::ptrdiff_t>(from), all.end());
  return absl::StrJoin(tail, "\n");
}

void ChildSet::Add(std::string name, pid_t pid, std::string log) {
  absl::MutexLock lock(&mu_);
  children_.push_back(Child{std::move(name), pid, std::move(log)});
}

std::vector<ChildSet::Exit> ChildSet::Poll() {
  absl::MutexLock lock(&mu_);
  std::vector<Exit> exits;
  for (Child& c : children_) {
    if (!c.running) continue;
    int status = 0;
    const pid_t done = ::waitpid(c.pid, &status, WNOHANG);
    if (done == c.pid || (done < 0 && errno == ECHILD)) {
      c.running = false;
      exits.push_back(Exit{c.name, c.log, status});
    }
  }
  return exits;
}

bool ChildSet::Running(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  for (const Child& c : children_) {
    if (c.name == name) return c.running;
  }
  return false;
}

int ChildSet::running_count() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const Child& c : children_) n += c.running ? 1 : 0;
  return n;
}

void ChildSet::Stop(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    for (Child& c : children_) {
      if (c.running) ::kill(c.pid, SIGTERM);
    }
  }
  const absl::Time deadline = absl::Now() + grace;
  while (running_count() > 0 && absl::Now() < deadline) {
    Poll();
    if (running_count() > 0) absl::SleepFor(absl::Milliseconds(20));
  }
  absl::MutexLock lock(&mu_);
  for (Child& c : children_) {
    if (!c.running) continue;
    ::kill(c.pid, SIGKILL);
    int status = 0;
    while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    c.running = false;
  }
}

}  // namespace qtrain::cli
