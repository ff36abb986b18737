// A supervised child process: its own process group, killed with its parent, stdin and stdout
// as pipes (stderr inherited), and a Terminate() that always leaves nothing behind.
//
//   QTRAIN_ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn({.argv = {"/proc/self/exe", ...}}));
//   child->WriteLine(R"({"ping": {}})");
//   std::vector<std::string> lines;
//   QTRAIN_ASSIGN_OR_RETURN(bool open, child->ReadLines(&lines));
//   ExitStatus status = child->Terminate(absl::Seconds(2));
//
// The child gets PR_SET_PDEATHSIG=SIGKILL: it is killed when the *thread* that spawned it exits
// (that is how Linux defines "parent" for this signal), so spawn from a thread that lives as
// long as the child should. Terminate() and the destructor signal the whole process group, so
// the child's own children go too.
#ifndef QTRAIN_WORKER_DAEMON_CHILD_PROCESS_H_
#define QTRAIN_WORKER_DAEMON_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/file_util.h"

namespace qtrain::worker {

// How a child ended.
struct ExitStatus {
  bool exited = false;  // exited on its own (exit code valid)
  int exit_code = 0;
  int signal = 0;  // the signal that killed it, when !exited

  static ExitStatus FromWaitStatus(int wait_status);
  bool success() const { return exited && exit_code == 0; }
  // "exited with 1", "killed by signal 9 (Killed)".
  std::string Describe() const;
};

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0] is the program (a path: no PATH search)
  std::vector<std::string> env;   // NAME=VALUE added to (or replacing in) the parent's
  // The longest stdout line accepted; a longer one is an error from ReadLines.
  size_t max_line_bytes = size_t{64} << 20;
};

class ChildProcess {
 public:
  // Starts the child. INVALID_ARGUMENT for an empty argv; an error naming the program when it
  // cannot be started (missing, not executable).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const ChildSpec& spec);

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Terminates the child at once (SIGKILL to its group) if it still runs, and reaps it.
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // The child's stdout, for poll(); -1 once it reached its end.
  int stdout_fd() const { return stdout_.get(); }

  // Appends the complete lines (without '\n') available now, without blocking. Returns false
  // once stdout reached its end (a final line without '\n' is returned too). An over-long line
  // or a read error is an error.
  absl::StatusOr<bool> ReadLines(std::vector<std::string>* lines);

  // Writes `line` and '\n' to the child's stdin, waiting at most `timeout` for pipe space.
  // FAILED_PRECONDITION when the child closed its stdin (or exited), DEADLINE_EXCEEDED when it
  // does not read.
  absl::Status WriteLine(absl::string_view line, absl::Duration timeout = absl::Seconds(1));

  // Closes the child's stdin (it sees end of input).
  void CloseStdin() { stdin_ = ScopedFd(); }

  // The exit status if the child has ended (reaping it), without blocking.
  std::optional<ExitStatus> TryWait();
  // Waits at most `timeout` for the child to end by itself.
  std::optional<ExitStatus> WaitFor(absl::Duration timeout);

  // SIGTERM to the process group, SIGKILL to it after `grace`; reaps the child and returns how
  // it ended (at once if it already had). Whatever else is left of the group is killed too.
  ExitStatus Terminate(absl::Duration grace);

  // Sends `sig` to the child's process group (nothing once it is reaped).
  void SignalGroup(int sig);

  bool reaped() const { return exit_status_.has_value(); }

 private:
  ChildProcess(pid_t pid, ScopedFd stdin_fd, ScopedFd stdout_fd, size_t max_line_bytes)
      : pid_(pid),
        stdin_(std::move(stdin_fd)),
        stdout_(std::move(stdout_fd)),
        max_line_bytes_(max_line_bytes) {}

  // True once the leader has exited (it stays a zombie, so the group id stays ours).
  bool LeaderExited();
  // Kills what is left of the group, then reaps the leader. Needs LeaderExited().
  ExitStatus Reap();

  pid_t pid_;
  ScopedFd stdin_;
  ScopedFd stdout_;
  size_t max_line_bytes_;
  std::string partial_;
  std::optional<ExitStatus> exit_status_;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_CHILD_PROCESS_H_
