// The child processes of `qtrain local`: a coordinator and its workers, each in its own process
// group (so a Ctrl-C reaches only qtrain, which stops them in order), killed by the kernel if
// qtrain dies, with stdout and stderr in a log file.
#ifndef QTRAIN_CLI_LOCAL_CLUSTER_H_
#define QTRAIN_CLI_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace qtrain::cli {

// Starts `argv` (argv[0] an absolute path) with stdin from /dev/null and stdout and stderr
// appended to `log_path`. The child gets SIGKILL when this thread exits (PR_SET_PDEATHSIG) and
// starts with no blocked signals.
absl::StatusOr<pid_t> SpawnLogged(const std::vector<std::string>& argv,
                                  const std::string& log_path);

// "exit code 3", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

// The last `lines` lines of a file (for the log of a child that died).
std::string LogTail(const std::string& path, int lines);

// The children, reaped by Poll() while they run and stopped by Stop().
class ChildSet {
 public:
  struct Exit {
    std::string name;
    std::string log;
    int status = 0;
  };

  ~ChildSet() { Stop(absl::Seconds(5)); }

  void Add(std::string name, pid_t pid, std::string log);
  // Reaps the children that exited since the last call.
  std::vector<Exit> Poll();
  bool Running(const std::string& name) const;
  int running_count() const;
  // SIGTERM to every running child, SIGKILL to those still running after `grace`; reaps all.
  void Stop(absl::Duration grace);

 private:
  struct Child {
    std::string name;
    pid_t pid;
    std::string log;
    bool running = true;
  };
  mutable absl::Mutex mu_;
  std::vector<Child> children_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_LOCAL_CLUSTER_H_
