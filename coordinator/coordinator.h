// The coordinator's state machine: jobs, rounds (worker groups), workers, checkpoints and the
// event log. All state lives in memory under one mutex and is written through to the Store
// before any caller sees a change, so a restarted coordinator (LoadState) carries on where the
// previous one stopped.
//
//   QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> c, Coordinator::Create(options));
//   c->Tick();  // every ~100 ms: lease checks, the scheduler, rendezvous deadlines
//
// The gRPC services (job_service.h, worker_service.h) are thin adapters over this class.
#ifndef QTRAIN_COORDINATOR_COORDINATOR_H_
#define QTRAIN_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/metrics.h"
#include "coordinator/store.h"
#include "qtrain/v1/jobs.pb.h"
#include "qtrain/v1/worker.pb.h"

namespace qtrain::coordinator {

using Clock = std::function<absl::Time()>;

// What one rank reads in [start_step, end_step) of `stage` (train::PlanShardAssignment).
using DataPlanner = std::function<absl::StatusOr<v1::DataAssignment>(
    const v1::JobSpec& spec, int stage, int64_t start_step, int64_t end_step, int rank,
    int world_size)>;

struct CoordinatorOptions {
  Store* store = nullptr;  // not owned; must outlive the coordinator
  std::string run_root;    // job run directories: <run_root>/<ID>
  absl::Duration lease = absl::Seconds(10);
  // A first formation (and a stage boundary's) with fewer than world.max_workers idle
  // workers waits this long for more. A restart after a failure waits the job's
  // world.regroup_seconds instead, counted from the failure.
  absl::Duration settle = absl::Seconds(1);
  // Groups have at most this many ranks, whatever world.max_workers allows (0, the default:
  // no cap). A job whose min_workers is larger still forms with min_workers. For tests.
  int64_t max_group_size = 0;
  Clock clock;            // default: absl::Now
  DataPlanner plan_data;  // required; DefaultDataPlanner() in shard_plan.h
  // Event counters (lease expiries, checkpoint outcomes); not owned. Null: no metrics.
  CoordinatorMetrics* metrics = nullptr;
};

// Result of GetKey, delivered to its callback exactly once.
using GetKeyCallback = std::function<void(absl::StatusOr<std::string>)>;

class Coordinator {
 public:
  // Loads the store's state (live rounds are kept; their workers get a fresh lease) and
  // creates the run root.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();

  // --- JobService ---
  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const v1::GetJobRequest& request);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> CancelJob(const v1::CancelJobRequest& request);
  absl::StatusOr<v1::ListCheckpointsResponse> ListCheckpoints(
      const v1::ListCheckpointsRequest& request);
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers(const v1::ListWorkersRequest& request);

  // --- Events (events.cc) ---
  // Checks a WatchJob request (name format, job exists, after_sequence >= 0).
  absl::Status CheckWatch(const v1::WatchJobRequest& request);
  struct EventPage {
    std::vector<v1::JobEvent> events;
    // Every event with sequence <= scanned was considered (some may be filtered out).
    int64_t scanned = 0;
    // The job is finished and no event after `scanned` exists: the stream may end.
    bool ended = false;
  };
  // Durable events of `job` ("jobs/ID") after `after_sequence`, at most `limit`.
  absl::StatusOr<EventPage> ReadEvents(absl::string_view job, int64_t after_sequence, int limit,
                                       bool include_step_metrics);
  // Calls `wake` (at once, or from the thread that commits it) once job's latest event
  // sequence is > after_sequence, or the job ends. `wake` must not block or call back in.
  // Returns an id for CancelWait.
  int64_t WaitForEvents(absl::string_view job, int64_t after_sequence, std::function<void()> wake);
  void CancelWait(int64_t id);

  // --- WorkerService ---
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(
      const v1::RegisterWorkerRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::Status PutKey(const v1::PutKeyRequest& request);
  // Completes `done` with the value, DEADLINE_EXCEEDED at `deadline`, ABORTED when the round
  // ends first. Returns an id for CancelGetKey (0 when `done` already ran).
  int64_t GetKey(const v1::GetKeyRequest& request, absl::Time deadline, GetKeyCallback done);
  void CancelGetKey(int64_t id);
  absl::StatusOr<v1::CommitCheckpointResponse> CommitCheckpoint(
      const v1::CommitCheckpointRequest& request);
  absl::Status ReportFailure(const v1::ReportFailureRequest& request);
  absl::Status CompleteAssignment(const v1::CompleteAssignmentRequest& request);

  // Lease checks, scheduling, rendezvous deadlines. Also runs after every change that may let
  // a job form (the services call it from their timer thread).
  void Tick();

  absl::Duration lease() const { return options_.lease; }
  // Jobs and workers by state and the unfinished jobs' progress (metrics.cc): a copy taken
  // under the mutex, cheap enough for every scrape.
  CoordinatorSnapshot MetricsSnapshot() const;
  absl::Duration heartbeat_interval() const;

 private:
  struct KeyWaiter {
    int64_t id;
    std::string key;
    absl::Time deadline;
    GetKeyCallback done;
  };
  // A job's current group: in memory only (job.round and job.workers are durable).
  struct Round {
    bool live = false;
    int64_t number = 0;
    int stage = 0;
    int64_t start_step = 0;
    int64_t end_step = 0;
    std::vector<std::string> members;  // worker ids by rank
    std::vector<v1::Assignment> assignments;
    std::set<int64_t> delivered;  // ranks whose assignment was sent
    std::set<int64_t> completed;
    std::set<int64_t> stopped;  // cancelling: ranks that stopped
    bool restored = false;      // kept across a coordinator restart
    // Checkpoint step -> ranks that reported it in this round.
    std::map<int64_t, std::set<int64_t>> checkpoint_ranks;
    std::map<std::string, std::string> kv;
    int64_t kv_bytes = 0;
    std::vector<KeyWaiter> waiters;
  };
  struct JobRecord {
    v1::Job job;
    int64_t ordinal = 0;  // creation order, for FIFO and page tokens
    int64_t last_sequence = 0;
    std::vector<int64_t> stage_starts;  // StageStartSteps(spec)
    Round round;
    std::optional<absl::Time> settle_since;
    // When the job's last round failed (it is RESTARTING): the regroup window starts here.
    std::optional<absl::Time> failed_at;
    int64_t last_metrics_step = -1;
    // The last step advance, or when it began RUNNING or came into memory (metrics only).
    absl::Time last_progress;
    int64_t last_eval_step = -1;
    // The step of the last eval_task events (restored from the stored events).
    int64_t last_eval_task_step = -1;
    std::vector<std::pair<int64_t, std::function<void()>>> event_waiters;
  };
  struct WorkerRecord {
    v1::Worker worker;
    int64_t ordinal = 0;
    absl::Time last_heartbeat;
    absl::Time persisted_heartbeat;
    bool draining = false;
    std::deque<v1::Directive> pending;
    // The job/round it was last assigned to (for aborting stale rounds).
    std::string last_job;
    int64_t last_round = 0;
  };
  // What a round failure does to the job.
  enum class FailureKind { kRetryable, kFatal, kDrained };

  explicit Coordinator(const CoordinatorOptions& options);
  absl::Status Load();
  absl::Time Now() const { return options_.clock(); }
  std::string Id(absl::string_view resource) const;

  // Commits `batch` and then wakes event watchers. On failure nothing in memory may have been
  // changed by the caller yet (callers mutate copies, then adopt them after Commit).
  absl::Status CommitLocked(const StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeWatchersLocked(JobRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends an event with the job's next sequence to `batch`.
  void AddEventLocked(JobRecord& record, v1::JobEvent event, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetStateLocked(JobRecord& record, v1::JobState state, std::string message, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobRecord*> FindJobLocked(absl::string_view name, absl::string_view field)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<WorkerRecord*> FindWorkerLocked(absl::string_view name, absl::string_view field)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job and the live round a worker RPC names; FAILED_PRECONDITION for a stale round.
  absl::StatusOr<JobRecord*> FindRoundLocked(absl::string_view worker, absl::string_view job,
                                             int64_t round, std::optional<int64_t> rank)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // scheduler.cc
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NeedsGroup(const JobRecord& record) const;
  // Whether a job that has at least min_workers but fewer than max_workers idle workers waits
  // for more: the settle window, or the regroup window of a restart.
  bool WaitsForMoreWorkersLocked(JobRecord& record, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FormGroupLocked(JobRecord& record, const std::vector<WorkerRecord*>& workers,
                               StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<v1::Checkpoint> LatestCommittedLocked(const JobRecord& record) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct RoundStart {
    int stage = 0;
    int64_t start_step = 0;
    int64_t end_step = 0;
    std::optional<v1::Checkpoint> resume;
  };
  // Where a new round starts: the latest committed checkpoint (within `stage_hint` when given).
  void ChooseStartLocked(const JobRecord& record, std::optional<int> stage_hint,
                         RoundStart* out) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<v1::Assignment>> PlanRoundLocked(
      const JobRecord& record, int64_t round, const std::vector<std::string>& members,
      const RoundStart& start) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // membership.cc
  void CheckLeasesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PersistHeartbeatsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Aborts the job's live round and restarts, fails or re-forms the job.
  void FailRoundLocked(JobRecord& record, FailureKind kind, const std::string& reason,
                       StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the round: members back to IDLE (unless lost), rendezvous waiters aborted, WRITING
  // checkpoints of the round FAILED. `abort_reason` non-empty: an Abort is sent to members.
  void ReleaseRoundLocked(JobRecord& record, const std::string& abort_reason, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleProgressLocked(WorkerRecord& worker, const v1::HeartbeatRequest& request,
                            StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AddEvalTaskEventsLocked(JobRecord& record, const v1::WorkerProgress& p, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RestoreEvalTaskStepLocked(JobRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleIdleMemberLocked(WorkerRecord& worker, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkStoppedLocked(JobRecord& record, int64_t rank, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PutWorkerLocked(WorkerRecord& worker, StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // checkpoints.cc
  // CommitCheckpoint without the metrics: one rank's report of a checkpoint.
  absl::StatusOr<v1::CommitCheckpointResponse> ReportCheckpoint(
      const v1::CommitCheckpointRequest& request) ABSL_LOCKS_EXCLUDED(mu_);
  // The COMMITTED checkpoint of `job` at `step` if `rank` reported files for it.
  const v1::Checkpoint* CommittedWithRankLocked(absl::string_view job, int64_t step, int64_t rank)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AlreadyCompletedLocked(const v1::CompleteAssignmentRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyRetentionLocked(JobRecord& record, StoreBatch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishRoundLocked(JobRecord& record, StoreBatch& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // rendezvous.cc
  void ExpireKeyWaitersLocked(std::vector<std::function<void()>>& done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AbortKeyWaitersLocked(Round& round, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  mutable absl::Mutex mu_;
  // Serializes Store calls (the store is used from the watch threads too).
  absl::Mutex store_mu_ ABSL_ACQUIRED_AFTER(mu_);

  std::vector<std::unique_ptr<JobRecord>> jobs_ ABSL_GUARDED_BY(mu_);  // by ordinal
  std::unordered_map<std::string, JobRecord*> jobs_by_id_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, JobRecord*> jobs_by_request_ ABSL_GUARDED_BY(mu_);
  int64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
  // Checkpoints by job id, by step.
  std::unordered_map<std::string, std::map<int64_t, v1::Checkpoint>> checkpoints_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<WorkerRecord>> workers_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, WorkerRecord*> workers_by_id_ ABSL_GUARDED_BY(mu_);
  int64_t next_worker_number_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t next_wait_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Event waiters: id -> job id.
  std::unordered_map<int64_t, std::string> wait_jobs_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<int64_t, std::string> key_waiter_jobs_ ABSL_GUARDED_BY(mu_);
  absl::Time last_heartbeat_persist_ ABSL_GUARDED_BY(mu_);
  // Jobs that got events in the batch being committed (their watchers are woken after it).
  std::vector<JobRecord*> evented_ ABSL_GUARDED_BY(mu_);
  // Callbacks to run once mu_ is released (GetKey results).
  std::vector<std::function<void()>> deferred_ ABSL_GUARDED_BY(mu_);

  void RunDeferred() ABSL_LOCKS_EXCLUDED(mu_);
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_COORDINATOR_H_
