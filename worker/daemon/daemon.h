// The worker daemon: registers with the coordinator, keeps the Heartbeat stream, and runs the
// assignments it is given as `train-stage` children, forwarding their progress, checkpoints,
// completion and failures (CONTRACT: "Worker daemon <-> training child").
//
//   QTRAIN_ASSIGN_OR_RETURN(auto daemon, WorkerDaemon::Start(options));
//   daemon->Drain(/*exit_when_drained=*/true);  // on SIGTERM
//   return daemon->Wait();
#ifndef QTRAIN_WORKER_DAEMON_DAEMON_H_
#define QTRAIN_WORKER_DAEMON_DAEMON_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "prometheus/registry.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::worker {

struct DaemonOptions {
  ChannelOptions channel;  // the coordinator
  std::string work_dir;
  v1::DeviceKind device = v1::DEVICE_KIND_CPU;
  std::string name;  // the worker's name (its id's prefix); empty: the hostname
  int threads = 0;   // passed to the training child; 0: its default
  // The address this worker's collectives listen on, told the coordinator
  // (RegisterWorker.peer_host) and given to the training child; empty: the hostname.
  std::string peer_host;
  // A collective (or a group's rendezvous) that has not completed within this fails the round.
  absl::Duration collective_timeout = absl::Seconds(300);
  absl::Duration drain_timeout = absl::Seconds(300);
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration reconnect_initial = absl::Milliseconds(100);
  absl::Duration reconnect_max = absl::Seconds(2);
  absl::Duration ping_interval = absl::Milliseconds(500);
  // SIGTERM to the child's group, then SIGKILL after this.
  absl::Duration kill_grace = absl::Seconds(2);
  // The training child's program and leading arguments.
  std::vector<std::string> child_command = {"/proc/self/exe", "train-stage"};
  std::string version;
  // Where the worker's metrics go (worker_metrics.h); null: no metrics.
  std::shared_ptr<prometheus::Registry> metrics;
  // The device's peak FLOP/s for qtrain_model_flops_utilization; unset: KnownPeakFlops of the
  // device (none on a CPU).
  std::optional<double> peak_flops;
};

class WorkerDaemon {
 public:
  // Checks the device, locks the work directory, and starts registering and heartbeating in
  // the background (a coordinator that is not up yet is waited for).
  static absl::StatusOr<std::unique_ptr<WorkerDaemon>> Start(const DaemonOptions& options);
  // Stops as Stop() does and waits.
  ~WorkerDaemon();

  // Takes no new assignment; the running one stops at its next committed checkpoint (or ends),
  // within the drain timeout. With exit_when_drained the daemon then ends (Wait returns).
  void Drain(bool exit_when_drained);
  // Ends now: the child is stopped (SIGTERM, SIGKILL after the grace), no more calls.
  void Stop();
  // Blocks until the daemon ended; its status (OK after a drain or Stop).
  absl::Status Wait();
  // True once the daemon ended.
  bool done() const;
  // "workers/<id>" once registered.
  std::string worker_name() const;

  class Impl;

 private:
  explicit WorkerDaemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_DAEMON_H_
