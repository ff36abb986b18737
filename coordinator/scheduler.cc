// The scheduler: FIFO over the jobs that need a group, the settle and regroup windows, group
// formation (rounds) and the assignments sent to each rank.
#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"

namespace qtrain::coordinator {
namespace {

v1::DeviceKind Normalize(v1::DeviceKind kind) {
  return kind == v1::DEVICE_KIND_UNSPECIFIED ? v1::DEVICE_KIND_CPU : kind;
}

}  // namespace

bool Coordinator::NeedsGroup(const JobRecord& record) const {
  switch (record.job.state()) {
    case v1::JOB_STATE_QUEUED:
    case v1::JOB_STATE_SCHEDULING:
    case v1::JOB_STATE_RESTARTING:
      return !record.round.live;
    default:
      return false;
  }
}

bool Coordinator::WaitsForMoreWorkersLocked(JobRecord& record, absl::Time now) {
  if (record.job.state() == v1::JOB_STATE_RESTARTING) {
    // A lost member may be replaced: wait for one up to regroup_seconds after the failure,
    // then continue with the workers there are (the job grows back at a stage boundary).
    if (!record.failed_at) record.failed_at = now;
    const v1::WorldSpec& world = record.job.spec().world();
    const double seconds =
        world.has_regroup_seconds() ? world.regroup_seconds() : kDefaultRegroupSeconds;
    const absl::Duration regroup =
        std::isfinite(seconds) && seconds > 0 ? absl::Seconds(seconds) : absl::ZeroDuration();
    return now - *record.failed_at < regroup;
  }
  if (!record.settle_since) record.settle_since = now;
  return now - *record.settle_since < options_.settle;
}

void Coordinator::ScheduleLocked() {
  const absl::Time now = Now();
  std::set<const WorkerRecord*> taken;  // formed or held by a settling job in this pass
  StoreBatch batch;
  for (auto& owned : jobs_) {
    JobRecord& record = *owned;
    if (!NeedsGroup(record)) {
      record.settle_since.reset();
      if (record.job.state() != v1::JOB_STATE_RESTARTING) record.failed_at.reset();
      continue;
    }
    const v1::WorldSpec& world = record.job.spec().world();
    const v1::DeviceKind device = Normalize(world.device());
    const size_t min_workers = static_cast<size_t>(std::max<int64_t>(1, world.min_workers()));
    int64_t allowed = std::max<int64_t>(1, world.max_workers());
    if (options_.max_group_size > 0) allowed = std::min(allowed, options_.max_group_size);
    const size_t max_workers = std::max(min_workers, static_cast<size_t>(allowed));
    // After a failure a worker must have sent a heartbeat since: a member that died with the
    // round (its peer reported the broken collective first) stays IDLE until its lease ends,
    // and must not be regrouped in place of a live replacement.
    const absl::Time alive_since =
        record.job.state() == v1::JOB_STATE_RESTARTING && record.failed_at.has_value()
            ? *record.failed_at
            : absl::InfinitePast();
    auto usable = [&](const WorkerRecord& w) {
      return w.worker.state() == v1::WORKER_STATE_IDLE && !w.draining &&
             Normalize(w.worker.device()) == device && taken.count(&w) == 0 &&
             w.last_heartbeat >= alive_since;
    };
    // The previous group first (a stage change normally keeps its workers), then by
    // registration order.
    std::vector<WorkerRecord*> candidates;
    for (const std::string& id : record.round.members) {
      auto it = workers_by_id_.find(id);
      if (it != workers_by_id_.end() && usable(*it->second)) candidates.push_back(it->second);
    }
    for (auto& w : workers_) {
      if (usable(*w) &&
          std::find(candidates.begin(), candidates.end(), w.get()) == candidates.end()) {
        candidates.push_back(w.get());
      }
    }
    if (candidates.size() < min_workers) {
      record.settle_since.reset();
      continue;
    }
    if (candidates.size() < max_workers && WaitsForMoreWorkersLocked(record, now)) {
      for (WorkerRecord* w : candidates) taken.insert(w);  // held while it waits
      continue;
    }
    candidates.resize(std::min(candidates.size(), max_workers));
    record.settle_since.reset();
    record.failed_at.reset();
    FormGroupLocked(record, candidates, batch).IgnoreError();  // a failed job is FAILED
    for (WorkerRecord* w : candidates) taken.insert(w);
  }
  if (!batch.empty()) CommitLocked(batch).IgnoreError();  // logged by CommitLocked
}

std::optional<v1::Checkpoint> Coordinator::LatestCommittedLocked(const JobRecord& record) const {
  auto it = checkpoints_.find(Id(record.job.name()));
  if (it == checkpoints_.end()) return std::nullopt;
  for (auto c = it->second.rbegin(); c != it->second.rend(); ++c) {
    if (c->second.state() == v1::CHECKPOINT_STATE_COMMITTED) return c->second;
  }
  return std::nullopt;
}

void Coordinator::ChooseStartLocked(const JobRecord& record, std::optional<int> stage_hint,
                                    RoundStart* out) const {
  const std::vector<int64_t>& starts = record.stage_starts;
  const int stages = record.job.spec().curriculum_size();
  std::optional<v1::Checkpoint> resume = LatestCommittedLocked(record);
  int s = 0;
  if (stage_hint.has_value()) {
    // A kept round: its stage is known; resume within it.
    s = std::clamp(*stage_hint, 0, stages - 1);
    if (resume && (resume->step() < starts[s] || resume->step() > starts[s + 1])) {
      resume.reset();
    }
  } else {
    // The stage holding the resume step; a stage's final checkpoint resumes the next stage.
    const int64_t step = resume ? resume->step() : 0;
    while (s + 1 < stages && starts[s + 1] <= step) ++s;
  }
  out->stage = s;
  out->start_step = resume ? resume->step() : starts[s];
  out->end_step = starts[s + 1];
  out->resume = std::move(resume);
}

absl::StatusOr<std::vector<v1::Assignment>> Coordinator::PlanRoundLocked(
    const JobRecord& record, int64_t round, const std::vector<std::string>& members,
    const RoundStart& start_at) {
  const v1::Job& job = record.job;
  const int s = start_at.stage;
  const int64_t start = start_at.start_step;
  const int64_t end = start_at.end_step;
  std::vector<v1::Assignment> assignments;
  const int world = static_cast<int>(members.size());
  for (int rank = 0; rank < world; ++rank) {
    v1::Assignment a;
    a.set_job(job.name());
    *a.mutable_spec() = job.spec();
    a.set_round(round);
    a.set_rank(rank);
    a.set_world_size(world);
    a.set_stage(s);
    a.set_start_step(start);
    a.set_end_step(end);
    if (start_at.resume) *a.mutable_resume_from() = *start_at.resume;
    // GPU groups move the gradient and the parameters over NCCL (and the rest over Gloo).
    a.set_backend(job.spec().world().device() == v1::DEVICE_KIND_CUDA
                      ? v1::COLLECTIVE_BACKEND_NCCL
                      : v1::COLLECTIVE_BACKEND_GLOO);
    a.set_rendezvous_prefix(absl::StrCat(job.name(), "/rounds/", round, "/"));
    a.set_run_directory(job.run_directory());
    a.set_checkpoint_directory(absl::StrCat(job.run_directory(), "/checkpoints"));
    absl::StatusOr<v1::DataAssignment> data =
        options_.plan_data(job.spec(), s, start, end, rank, world);
    if (!data.ok()) {
      std::string message(data.status().message());
      if (!absl::StrContains(message, "data.manifest")) {
        message = absl::StrCat("data.manifest ", job.spec().data().manifest(), ": ", message);
      }
      return absl::Status(data.status().code(), message);
    }
    *a.mutable_data() = *std::move(data);
    assignments.push_back(std::move(a));
  }
  return assignments;
}

absl::Status Coordinator::FormGroupLocked(JobRecord& record,
                                          const std::vector<WorkerRecord*>& workers,
                                          StoreBatch& batch) {
  v1::Job& job = record.job;
  const int64_t round_number = job.round() + 1;
  std::vector<std::string> members;
  for (WorkerRecord* w : workers) members.push_back(Id(w->worker.name()));
  RoundStart start_at;
  ChooseStartLocked(record, std::nullopt, &start_at);
  const int stage = start_at.stage;
  const int64_t start = start_at.start_step, end = start_at.end_step;
  absl::StatusOr<std::vector<v1::Assignment>> assignments =
      PlanRoundLocked(record, round_number, members, start_at);
  if (!assignments.ok()) {
    // Reading the manifest failed: a restart cannot help.
    QTRAIN_LOG(WARNING) << job.name() << ": cannot plan the data: " << assignments.status();
    SetStateLocked(record, v1::JOB_STATE_FAILED, std::string(assignments.status().message()),
                   batch);
    return assignments.status();
  }
  const v1::JobState previous = job.state();
  job.set_round(round_number);
  job.clear_workers();
  for (WorkerRecord* w : workers) job.add_workers(w->worker.name());
  job.mutable_progress()->set_stage(stage);
  job.mutable_progress()->set_step(start);
  Round& round = record.round;
  round = Round();
  round.live = true;
  round.number = round_number;
  round.stage = stage;
  round.start_step = start;
  round.end_step = end;
  round.members = members;
  round.assignments = *std::move(assignments);
  record.last_metrics_step = start;
  if (previous == v1::JOB_STATE_RESTARTING) {
    v1::JobEvent event;
    v1::Restarted* restarted = event.mutable_restarted();
    restarted->set_restarts(job.restarts());
    restarted->set_reason(job.state_message());
    if (round.assignments[0].has_resume_from()) {
      restarted->set_resume_checkpoint(round.assignments[0].resume_from().name());
    }
    restarted->set_round(round_number);
    AddEventLocked(record, std::move(event), batch);
  }
  SetStateLocked(
      record, v1::JOB_STATE_SCHEDULING,
      absl::StrCat("round ", round_number, ": ", workers.size(), " worker",
                   workers.size() == 1 ? "" : "s", ", stage ", stage, " from step ", start),
      batch);
  if (start == record.stage_starts[stage]) {
    v1::JobEvent event;
    v1::StageStarted* started = event.mutable_stage_started();
    started->set_stage(stage);
    *started->mutable_spec() = job.spec().curriculum(stage);
    started->set_step(start);
    AddEventLocked(record, std::move(event), batch);
  }
  for (size_t rank = 0; rank < workers.size(); ++rank) {
    WorkerRecord& w = *workers[rank];
    w.worker.set_state(v1::WORKER_STATE_ASSIGNED);
    w.worker.set_job(job.name());
    w.worker.set_rank(static_cast<int64_t>(rank));
    w.last_job = job.name();
    w.last_round = round_number;
    std::erase_if(w.pending, [](const v1::Directive& d) { return d.has_assign(); });
    v1::Directive directive;
    *directive.mutable_assign() = round.assignments[rank];
    w.pending.push_back(std::move(directive));
    PutWorkerLocked(w, batch);
  }
  QTRAIN_LOG(INFO) << "group formed: " << job.name() << " round " << round_number << ", stage "
                   << stage << ", steps [" << start << ", " << end << "), workers "
                   << absl::StrJoin(members, ",");
  return absl::OkStatus();
}

}  // namespace qtrain::coordinator
