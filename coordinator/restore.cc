// Loading the durable state at start: jobs, checkpoints, workers and the live rounds, which are
// kept (their workers get a fresh lease from now to reconnect).
#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"
#include "coordinator/time_util.h"

namespace qtrain::coordinator {
namespace {

bool HasLiveRound(const v1::Job& job) {
  return (job.state() == v1::JOB_STATE_SCHEDULING || job.state() == v1::JOB_STATE_RUNNING ||
          job.state() == v1::JOB_STATE_CANCELLING) &&
         job.workers_size() > 0;
}

// The trailing number of "name-7".
int64_t IdNumber(absl::string_view id) {
  const size_t dash = id.rfind('-');
  int64_t n = 0;
  if (dash == absl::string_view::npos || !absl::SimpleAtoi(id.substr(dash + 1), &n)) return 0;
  return n;
}

}  // namespace

// The step of a live job's last eval_task event: a progress resent to the new coordinator
// (every heartbeat repeats the last one) then adds no second copy.
absl::Status Coordinator::RestoreEvalTaskStepLocked(JobRecord& record) {
  if (record.job.spec().eval().tasks().empty()) return absl::OkStatus();
  constexpr int kPage = 1000;
  for (int64_t after = 0;;) {
    std::vector<v1::JobEvent> events;
    {
      absl::MutexLock lock(&store_mu_);
      QTRAIN_ASSIGN_OR_RETURN(events, options_.store->ReadEvents(record.job.name(), after, kPage,
                                                                 /*include_step_metrics=*/false));
    }
    for (const v1::JobEvent& event : events) {
      after = event.sequence();
      if (event.has_eval_task()) {
        record.last_eval_task_step = std::max(record.last_eval_task_step, event.eval_task().step());
      }
    }
    if (static_cast<int>(events.size()) < kPage) return absl::OkStatus();
  }
}

absl::Status Coordinator::Load() {
  StoredState state;
  {
    absl::MutexLock lock(&store_mu_);
    QTRAIN_ASSIGN_OR_RETURN(state, options_.store->LoadState());
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  next_job_number_ = std::max<int64_t>(1, state.next_job_number);
  last_heartbeat_persist_ = now;
  for (v1::Checkpoint& c : state.checkpoints) {
    // "jobs/ID/checkpoints/step-N"
    absl::string_view name = c.name();
    if (name.size() < 5) continue;
    const std::string id(name.substr(5, name.find('/', 5) - 5));
    checkpoints_[id][c.step()] = std::move(c);
  }
  for (v1::Worker& w : state.workers) {
    auto record = std::make_unique<WorkerRecord>();
    record->ordinal = static_cast<int64_t>(workers_.size());
    record->worker = std::move(w);
    // Everyone gets a fresh lease from the restart.
    record->last_heartbeat = now;
    record->persisted_heartbeat = FromProto(record->worker.last_heartbeat_time());
    record->draining = record->worker.state() == v1::WORKER_STATE_DRAINING;
    const std::string id = Id(record->worker.name());
    next_worker_number_ = std::max(next_worker_number_, IdNumber(id) + 1);
    workers_by_id_[id] = record.get();
    workers_.push_back(std::move(record));
  }
  for (v1::Job& job : state.jobs) {
    auto record = std::make_unique<JobRecord>();
    record->ordinal = static_cast<int64_t>(jobs_.size());
    absl::StatusOr<std::vector<int64_t>> starts = StageStartSteps(job.spec());
    if (!starts.ok() || job.spec().curriculum_size() == 0) {
      return absl::DataLossError(absl::StrCat("stored job ", job.name(), " has a bad spec"));
    }
    record->stage_starts = *std::move(starts);
    record->job = std::move(job);
    record->last_metrics_step = record->job.progress().step();
    record->last_progress = now;
    if (record->job.state() == v1::JOB_STATE_RESTARTING && record->job.has_update_time()) {
      // The regroup window runs from the failure (the state's last change), not the restart.
      record->failed_at = std::min(now, FromProto(record->job.update_time()));
    }
    const std::string id = Id(record->job.name());
    jobs_by_id_[id] = record.get();
    jobs_by_request_[record->job.request_id()] = record.get();
    jobs_.push_back(std::move(record));
  }
  for (const auto& [name, sequence] : state.last_event_sequence) {
    auto it = jobs_by_id_.find(Id(name));
    if (it != jobs_by_id_.end()) it->second->last_sequence = sequence;
  }
  StoreBatch batch;
  for (auto& owned : jobs_) {
    JobRecord& record = *owned;
    const v1::Job& job = record.job;
    if (!HasLiveRound(job)) continue;
    QTRAIN_RETURN_IF_ERROR(RestoreEvalTaskStepLocked(record));
    Round& round = record.round;
    round.live = true;
    round.restored = true;
    round.number = job.round();
    for (const std::string& name : job.workers()) round.members.push_back(Id(name));
    RoundStart start_at;
    ChooseStartLocked(record, static_cast<int>(job.progress().stage()), &start_at);
    round.stage = start_at.stage;
    round.start_step = start_at.start_step;
    round.end_step = start_at.end_step;
    // Kept to resend to a member that never got it (the manifest may be unreadable now: then
    // such a member is left to its lease).
    absl::StatusOr<std::vector<v1::Assignment>> assignments =
        PlanRoundLocked(record, round.number, round.members, start_at);
    if (assignments.ok()) round.assignments = *std::move(assignments);
    // Ranks whose worker left the round before the restart count as done or stopped.
    for (size_t rank = 0; rank < round.members.size(); ++rank) {
      auto w = workers_by_id_.find(round.members[rank]);
      const bool member = w != workers_by_id_.end() &&
                          w->second->worker.state() != v1::WORKER_STATE_LOST &&
                          w->second->worker.job() == job.name();
      if (member) {
        w->second->last_job = job.name();
        w->second->last_round = round.number;
      } else if (job.state() == v1::JOB_STATE_CANCELLING) {
        round.stopped.insert(rank);
      }
    }
    // Checkpoints being written in the round: the ranks that reported are in their files.
    for (auto& [step, c] : checkpoints_[Id(job.name())]) {
      if (c.state() != v1::CHECKPOINT_STATE_WRITING) continue;
      for (const v1::CheckpointFile& f : c.files()) round.checkpoint_ranks[step].insert(f.rank());
    }
    QTRAIN_LOG(INFO) << "kept round " << round.number << " of " << job.name() << " ("
                     << v1::JobState_Name(job.state()) << ", " << round.members.size()
                     << " workers)";
  }
  // Workers assigned to a job without a live round are free again.
  for (auto& w : workers_) {
    if (w->worker.job().empty()) continue;
    auto it = jobs_by_id_.find(Id(w->worker.job()));
    if (it == jobs_by_id_.end() || !it->second->round.live ||
        w->worker.state() == v1::WORKER_STATE_LOST) {
      if (w->worker.state() != v1::WORKER_STATE_LOST) {
        w->worker.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
      }
      w->worker.clear_job();
      PutWorkerLocked(*w, batch);
    }
  }
  QTRAIN_LOG(INFO) << "state loaded: " << jobs_.size() << " jobs, " << workers_.size()
                   << " workers";
  return CommitLocked(batch);
}

}  // namespace qtrain::coordinator
