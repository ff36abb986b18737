// One training child at work on one assignment: the assignment file, the `train-stage` process,
// the stage.proto protocol on its pipes (events parsed from its stdout, pings and checkpoint
// acks written to its stdin) and its termination (SIGTERM, then SIGKILL after a grace period),
// all without blocking, so that the daemon's loop keeps heartbeating meanwhile.
#ifndef QTRAIN_WORKER_DAEMON_STAGE_RUNNER_H_
#define QTRAIN_WORKER_DAEMON_STAGE_RUNNER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "qtrain/v1/stage.pb.h"
#include "qtrain/v1/worker.pb.h"
#include "worker/daemon/child_process.h"

namespace qtrain::worker {

struct StageRunnerOptions {
  // The child's program and leading arguments; --assignment, --threads, --parent-timeout-ms
  // and the group flags below are appended.
  std::vector<std::string> command;
  int threads = 0;  // 0: not passed (the child's default)
  absl::Duration parent_timeout = absl::Seconds(5);
  absl::Duration ping_interval = absl::Milliseconds(500);
  // What a rank of a group needs to rendezvous through the coordinator: its connection
  // (--coordinator and, those set, --cluster-token-file, --tls-*), the worker's name
  // (--worker), the address its collectives listen on (--peer-host) and their timeout
  // (--collective-timeout-ms). Empty strings are not passed.
  ChannelOptions coordinator;
  std::string worker;
  std::string peer_host;
  absl::Duration collective_timeout = absl::Seconds(300);
};

// The arguments of the child: options.command and the flags above.
std::vector<std::string> StageChildArgv(const std::string& assignment_path,
                                        const StageRunnerOptions& options);

// "<work-dir>/assignments/<ID>-r<round>-rank<r>.json" for jobs/<ID>.
std::string AssignmentFileName(const v1::Assignment& assignment);

class StageRunner {
 public:
  // Writes `assignment` as proto JSON to `assignment_path` and starts the child. Must be called
  // from a thread that outlives the child (see ChildProcess).
  static absl::StatusOr<std::unique_ptr<StageRunner>> Start(const v1::Assignment& assignment,
                                                            const std::string& assignment_path,
                                                            const StageRunnerOptions& options);

  const v1::Assignment& assignment() const { return assignment_; }
  pid_t pid() const { return child_->pid(); }
  // For poll(); -1 once the output ended.
  int stdout_fd() const { return child_->stdout_fd(); }

  // The events the child wrote since the last call. Lines that are not events are logged and
  // skipped. An unreadable output is an error (the child is then stopped).
  absl::StatusOr<std::vector<v1::StageChildEvent>> ReadEvents();

  // Pings when one is due and escalates a stop to SIGKILL when its grace ran out.
  void Tick(absl::Time now);
  // When Tick() next has something to do.
  absl::Time next_tick() const;

  // Answers the child's checkpoint event.
  absl::Status Ack(bool ok, const std::string& message);

  // Starts stopping the child: SIGTERM to its group now, SIGKILL after `grace`.
  void Stop(absl::Duration grace);
  bool stopping() const { return kill_at_.has_value(); }

  // How the child ended, once it did (and its output was read to the end).
  std::optional<ExitStatus> TryWait();

 private:
  StageRunner(v1::Assignment assignment, std::unique_ptr<ChildProcess> child,
              absl::Duration ping_interval)
      : assignment_(std::move(assignment)),
        child_(std::move(child)),
        ping_interval_(ping_interval),
        next_ping_(absl::Now() + ping_interval) {}

  v1::Assignment assignment_;
  std::unique_ptr<ChildProcess> child_;
  absl::Duration ping_interval_;
  absl::Time next_ping_;
  std::optional<absl::Time> kill_at_;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_STAGE_RUNNER_H_
