// The training child of a worker daemon: `qtrain-worker train-stage --assignment FILE`.
//
// It trains one assignment (worker.proto Assignment, as proto JSON in FILE) with the trainer
// library: the job's stage `stage` from step `start_step` to `end_step`, loading the checkpoint
// named by `resume_from` (none: from the seeded initialization), in the run directory
// `run_directory` (taking its lock, waiting a bounded time for a previous holder to go), reading
// only the shards of `data`. It speaks the stage.proto protocol: StageChildEvent lines on
// `events_fd` (stdout), StageParentMessage lines on `control_fd` (stdin); its stderr is its log.
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

#include <string>

#include "absl/time/time.h"

namespace qtrain::worker {

struct StageChildOptions {
  std::string assignment_path;
  int threads = 0;  // 0: the runtime default
  int events_fd = 1;
  int control_fd = 0;
  absl::Duration parent_timeout = absl::Seconds(5);
  // How long to wait for the run directory's lock when another process holds it.
  absl::Duration lock_wait = absl::Seconds(30);
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
