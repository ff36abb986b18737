// The training child of a worker daemon: `qtrain-worker train-stage --assignment FILE`.
//
// It trains one assignment (worker.proto Assignment, as proto JSON in FILE) with the trainer
// library: the job's stage `stage` from step `start_step` to `end_step`, loading the checkpoint
// named by `resume_from` (none: from the seeded initialization), in the run directory
// `run_directory` (taking its lock, waiting a bounded time for a previous holder to go), reading
// only the shards of `data`. It speaks the stage.proto protocol: StageChildEvent lines on
// `events_fd` (stdout), StageParentMessage lines on `control_fd` (stdin); its stderr is its log.
//
// A rank of a group (world_size > 1) first joins its group (phase RENDEZVOUS): the
// coordinator's rendezvous keys under the assignment's rendezvous_prefix and a Gloo mesh
// (options.connect_group), listening on options.peer_host. A failed or timed-out collective
// ends the child with a retryable error; SIGTERM aborts a collective under way. Only rank 0
// takes the run directory's lock (the others write only their optimizer shards). A job on
// world.device cuda trains on a CUDA backend (options.create_backend); in a group whose
// assignment says backend NCCL (the coordinator's choice for CUDA jobs), each rank also joins
// the group's device communicator (options.connect_device_group: NCCL over the same rendezvous),
// so that the gradient and the parameters stay on the GPU (TrainerOptions::
// device_communicator); backend GLOO keeps them on the host-staged path over Gloo. A worker that
// cannot join NCCL (a build without it) fails such an assignment as not retryable.
//
// It ends on its own:
//  - exit 0 after a StageDone event (end_step reached, its checkpoint committed, and on the
//    job's last stage the model exported to <run_directory>/final/ exactly as `qtrain train`
//    does);
//  - exit 1 after a StageError event (retryable false for bad input: missing or changed data,
//    invalid model or spec);
//  - exit 3 (after a StageError, CANCELLED) on SIGTERM/SIGINT: it stops between two steps;
//  - exit 4 when the parent is silent for parent_timeout (no ping, no message) or its stdin
//    closes: a stopped, hung or dead parent never leaves a child training.
//
// Test hook: with QTRAIN_TEST_STEP_DELAY_MS=N in the environment, the child sleeps N ms after
// every optimizer step (cut short by a stop), so that tests can act while a stage is under way.
#ifndef QTRAIN_WORKER_DAEMON_STAGE_CHILD_H_
#define QTRAIN_WORKER_DAEMON_STAGE_CHILD_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "kernels/ops.h"
#include "qtrain/v1/jobs.pb.h"
#include "worker/comm/communicator.h"

namespace qtrain::worker {

// A rank's place in its group, as a group connector is given it.
struct GroupMember {
  int rank = 0;
  int world_size = 1;
  std::string job;  // "jobs/<id>"
  int64_t round = 0;
  std::string rendezvous_prefix;  // the assignment's
  std::string worker;             // "workers/<id>"
  ChannelOptions coordinator;
  std::string peer_host;   // where this rank listens
  absl::Duration timeout;  // for the rendezvous and for every collective
  // True once the child is stopping: a rendezvous under way then gives up (CANCELLED).
  std::function<bool()> cancelled;
};

// Joins the group: a communicator of member.rank of member.world_size.
using GroupConnector =
    std::function<absl::StatusOr<std::unique_ptr<comm::Communicator>>(const GroupMember&)>;

struct StageChildOptions {
  std::string assignment_path;
  int threads = 0;  // 0: the runtime default
  int events_fd = 1;
  int control_fd = 0;
  absl::Duration parent_timeout = absl::Seconds(5);
  // How long to wait for the run directory's lock when another process holds it.
  absl::Duration lock_wait = absl::Seconds(30);
  // For world_size > 1: the coordinator (the rendezvous), this worker's name (workers/ID), the
  // address its collectives listen on, their timeout, and how the group is joined
  // (ConnectGlooGroup in production; null: a group is refused).
  ChannelOptions coordinator;
  std::string worker;
  std::string peer_host = "127.0.0.1";
  absl::Duration collective_timeout = absl::Seconds(300);
  GroupConnector connect_group;
  // world.device cuda, world_size > 1, assignment backend NCCL: how a rank joins the group's
  // device communicator, after connect_group (ConnectNcclGroup in production; UNIMPLEMENTED
  // from it, a build without NCCL, or null fail the assignment as not retryable).
  GroupConnector connect_device_group;
  // The backend of the job's world.device (train::CreateTrainingBackend when null; tests give
  // one whose memory the host cannot read).
  std::function<absl::StatusOr<std::unique_ptr<kernels::Backend>>(v1::DeviceKind)> create_backend;
};

// Exit codes of the child.
inline constexpr int kStageChildOk = 0;
inline constexpr int kStageChildFailed = 1;
inline constexpr int kStageChildUsage = 2;
inline constexpr int kStageChildCancelled = 3;
inline constexpr int kStageChildOrphaned = 4;

// Runs the child; returns its exit code (never calls exit()).
int RunStageChild(const StageChildOptions& options);

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_STAGE_CHILD_H_
