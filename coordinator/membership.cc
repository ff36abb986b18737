// Membership: registration, heartbeats and leases, lost and restarted workers, and what a
// failed round does to its job.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"
#include "coordinator/time_util.h"

namespace qtrain::coordinator {
namespace {

absl::Status CheckRegisterRequest(const v1::RegisterWorkerRequest& r) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(r.worker_id(), kMaxIdBytes + 8, "worker_id"));
  QTRAIN_RETURN_IF_ERROR(CheckLength(r.hostname(), kMaxShortStringBytes, "hostname"));
  QTRAIN_RETURN_IF_ERROR(CheckLength(r.version(), kMaxShortStringBytes, "version"));
  QTRAIN_RETURN_IF_ERROR(CheckLength(r.metrics_address(), kMaxShortStringBytes, "metrics_address"));
  QTRAIN_RETURN_IF_ERROR(CheckLength(r.peer_host(), kMaxShortStringBytes, "peer_host"));
  if (!v1::DeviceKind_IsValid(r.device())) {
    return absl::InvalidArgumentError(
        absl::StrCat("device: ", r.device(), " is not a device kind"));
  }
  if (r.device_count() < 0 || r.device_count() > 65536) {
    return absl::InvalidArgumentError("device_count: must be in [0, 65536]");
  }
  if (r.device_memory_bytes() < 0) {
    return absl::InvalidArgumentError("device_memory_bytes: must be >= 0");
  }
  if (r.device_names_size() > kMaxRepeated) {
    return absl::InvalidArgumentError(absl::StrCat("device_names: at most ", kMaxRepeated));
  }
  for (const std::string& n : r.device_names()) {
    QTRAIN_RETURN_IF_ERROR(CheckLength(n, kMaxShortStringBytes, "device_names"));
  }
  if (r.labels_size() > kMaxLabels) {
    return absl::InvalidArgumentError(absl::StrCat("labels: at most ", kMaxLabels, " labels"));
  }
  for (const auto& [k, v] : r.labels()) {
    QTRAIN_RETURN_IF_ERROR(CheckLength(k, kMaxLabelBytes, "labels (key)"));
    QTRAIN_RETURN_IF_ERROR(CheckLength(v, kMaxLabelBytes, "labels (value)"));
  }
  return absl::OkStatus();
}

absl::Status CheckProgress(const v1::WorkerProgress& p) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(p.job(), kMaxIdBytes + 8, "progress.job"));
  if (p.step() < 0 || p.stage() < 0 || p.round() < 0 || p.rank() < 0 || p.tokens_seen() < 0) {
    return absl::InvalidArgumentError(
        "progress: round, rank, stage, step and tokens_seen must be >= 0");
  }
  return absl::OkStatus();
}

std::string Plural(int64_t n, absl::string_view word) {
  return absl::StrCat(n, " ", word, n == 1 ? "" : "s");
}

}  // namespace

void Coordinator::PutWorkerLocked(WorkerRecord& worker, StoreBatch& batch) {
  *worker.worker.mutable_last_heartbeat_time() = ToProto(worker.last_heartbeat);
  worker.persisted_heartbeat = worker.last_heartbeat;
  batch.PutWorker(worker.worker);
}

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(
    const v1::RegisterWorkerRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckRegisterRequest(request));
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  WorkerRecord* record = nullptr;
  StoreBatch batch;
  if (!request.worker_id().empty()) {
    QTRAIN_ASSIGN_OR_RETURN(std::string id, ParseWorkerName(request.worker_id(), "worker_id"));
    if (auto it = workers_by_id_.find(id); it != workers_by_id_.end()) record = it->second;
  }
  std::unique_ptr<WorkerRecord> created;
  if (record == nullptr) {
    created = std::make_unique<WorkerRecord>();
    record = created.get();
    record->ordinal = static_cast<int64_t>(workers_.size());
    const std::string id =
        absl::StrCat(SanitizeWorkerPrefix(request.hostname()), "-", next_worker_number_);
    record->worker.set_name(WorkerName(id));
    *record->worker.mutable_register_time() = ToProto(now);
  } else if (!record->worker.job().empty()) {
    // The daemon restarted: the child of its round is gone.
    auto job = jobs_by_id_.find(Id(record->worker.job()));
    if (job != jobs_by_id_.end() && job->second->round.live) {
      JobRecord& j = *job->second;
      const auto& m = j.round.members;
      if (std::find(m.begin(), m.end(), Id(record->worker.name())) != m.end()) {
        if (j.job.state() == v1::JOB_STATE_CANCELLING) {
          MarkStoppedLocked(j, record->worker.rank(), batch);
        } else {
          FailRoundLocked(j, FailureKind::kRetryable,
                          absl::StrCat("worker ", record->worker.name(), " restarted during round ",
                                       j.round.number),
                          batch);
        }
      }
    }
  }
  v1::Worker& w = record->worker;
  w.set_hostname(request.hostname());
  w.set_device(request.device() == v1::DEVICE_KIND_UNSPECIFIED ? v1::DEVICE_KIND_CPU
                                                               : request.device());
  w.set_device_count(request.device_count());
  *w.mutable_device_names() = request.device_names();
  w.set_device_memory_bytes(request.device_memory_bytes());
  w.set_version(request.version());
  *w.mutable_labels() = request.labels();
  w.set_state(v1::WORKER_STATE_IDLE);
  w.clear_job();
  w.set_rank(0);
  record->draining = false;
  record->pending.clear();
  record->last_heartbeat = now;
  PutWorkerLocked(*record, batch);
  QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
  if (created) {
    ++next_worker_number_;
    workers_by_id_[Id(w.name())] = record;
    workers_.push_back(std::move(created));
    QTRAIN_LOG(INFO) << "worker registered: " << w.name() << " (" << w.hostname() << ", "
                     << v1::DeviceKind_Name(w.device()) << ")";
  } else {
    QTRAIN_LOG(INFO) << "worker re-registered: " << w.name();
  }
  v1::RegisterWorkerResponse response;
  *response.mutable_worker() = w;
  response.set_heartbeat_interval_ms(absl::ToInt64Milliseconds(heartbeat_interval()));
  response.set_lease_ms(absl::ToInt64Milliseconds(options_.lease));
  ScheduleLocked();
  return response;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& request) {
  if (request.has_progress()) QTRAIN_RETURN_IF_ERROR(CheckProgress(request.progress()));
  if (!v1::WorkerPhase_IsValid(request.phase())) {
    return absl::InvalidArgumentError(absl::StrCat("phase: ", request.phase(), " is not a phase"));
  }
  v1::HeartbeatResponse response;
  {
    absl::MutexLock lock(&mu_);
    QTRAIN_ASSIGN_OR_RETURN(WorkerRecord * worker, FindWorkerLocked(request.worker(), "worker"));
    const absl::Time now = Now();
    worker->last_heartbeat = now;
    StoreBatch batch;
    bool changed = false;
    v1::Worker& w = worker->worker;
    if (w.state() == v1::WORKER_STATE_LOST) {
      // Back from a lost lease: its round is gone; it is usable once it says it is idle.
      if (request.phase() == v1::WORKER_PHASE_IDLE && !request.has_progress()) {
        w.set_state(request.draining() ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
        w.clear_job();
        changed = true;
        QTRAIN_LOG(INFO) << "worker " << w.name() << " is back";
      } else if (!worker->last_job.empty() &&
                 std::none_of(worker->pending.begin(), worker->pending.end(),
                              [](const v1::Directive& d) { return d.has_abort(); })) {
        v1::Directive directive;
        v1::Abort* abort = directive.mutable_abort();
        abort->set_job(request.has_progress() ? request.progress().job() : worker->last_job);
        abort->set_round(request.has_progress() ? request.progress().round() : worker->last_round);
        abort->set_reason(absl::StrCat(w.name(), " lost its lease; its round is over"));
        worker->pending.push_back(std::move(directive));
      }
    } else {
      if (request.draining() != worker->draining) {
        worker->draining = request.draining();
        // A member keeps its round (job and rank) while it drains.
        w.set_state(worker->draining  ? v1::WORKER_STATE_DRAINING
                    : w.job().empty() ? v1::WORKER_STATE_IDLE
                                      : v1::WORKER_STATE_ASSIGNED);
        changed = true;
      }
      if (request.has_progress()) {
        HandleProgressLocked(*worker, request, batch);
      } else if (request.phase() == v1::WORKER_PHASE_IDLE ||
                 request.phase() == v1::WORKER_PHASE_STOPPED) {
        HandleIdleMemberLocked(*worker, batch);
      }
    }
    if (changed) PutWorkerLocked(*worker, batch);
    if (!batch.empty()) QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
    *response.mutable_lease_expire_time() = ToProto(now + options_.lease);
    if (!worker->pending.empty()) {
      v1::Directive& directive = worker->pending.front();
      if (directive.has_assign()) {
        auto job = jobs_by_id_.find(Id(directive.assign().job()));
        if (job != jobs_by_id_.end())
          job->second->round.delivered.insert(directive.assign().rank());
      }
      *response.mutable_directive() = std::move(directive);
      worker->pending.pop_front();
    }
    if (changed) ScheduleLocked();
  }
  RunDeferred();
  return response;
}

void Coordinator::HandleProgressLocked(WorkerRecord& worker, const v1::HeartbeatRequest& request,
                                       StoreBatch& batch) {
  const v1::WorkerProgress& p = request.progress();
  auto it = jobs_by_id_.find(Id(p.job()));
  JobRecord* record = it == jobs_by_id_.end() ? nullptr : it->second;
  const bool current = record != nullptr && record->round.live &&
                       p.round() == record->job.round() &&
                       p.rank() < static_cast<int64_t>(record->round.members.size()) &&
                       record->round.members[p.rank()] == Id(worker.worker.name());
  if (!current) {
    // A stale round (or a finished job): tell the worker to stop it, once.
    const bool queued =
        std::any_of(worker.pending.begin(), worker.pending.end(), [&](const v1::Directive& d) {
          return d.has_abort() && d.abort().job() == p.job() && d.abort().round() == p.round();
        });
    if (!queued && request.phase() != v1::WORKER_PHASE_IDLE &&
        request.phase() != v1::WORKER_PHASE_STOPPED) {
      v1::Directive directive;
      v1::Abort* abort = directive.mutable_abort();
      abort->set_job(p.job());
      abort->set_round(p.round());
      abort->set_reason(record == nullptr
                            ? absl::StrCat("no job named ", p.job())
                            : absl::StrCat("round ", p.round(), " of ", p.job(),
                                           " is over; the current round is ", record->job.round()));
      worker.pending.push_front(std::move(directive));
    }
    if (record == nullptr || !record->round.live || p.round() != record->job.round()) {
      HandleIdleMemberLocked(worker, batch);
    }
    return;
  }
  Round& round = record->round;
  v1::Job& job = record->job;
  round.delivered.insert(p.rank());
  if (job.state() == v1::JOB_STATE_CANCELLING) {
    if (request.phase() == v1::WORKER_PHASE_IDLE || request.phase() == v1::WORKER_PHASE_STOPPED) {
      MarkStoppedLocked(*record, p.rank(), batch);
    }
    return;
  }
  if (job.state() == v1::JOB_STATE_SCHEDULING && request.phase() == v1::WORKER_PHASE_TRAINING) {
    SetStateLocked(*record, v1::JOB_STATE_RUNNING, "", batch);
  }
  if (p.rank() != 0) return;
  v1::JobProgress* progress = job.mutable_progress();
  const bool new_step = p.step() > record->last_metrics_step;
  const int64_t total = record->stage_starts.back();
  progress->set_stage(std::min<int64_t>(p.stage(), job.spec().curriculum_size() - 1));
  progress->set_step(std::min(p.step(), total));
  progress->set_tokens_seen(p.tokens_seen());
  progress->set_loss(p.loss());
  progress->set_tokens_per_second(p.tokens_per_second());
  progress->set_eta_seconds(p.eta_seconds());
  if (p.has_eval_loss()) progress->set_eval_loss(p.eval_loss());
  if (new_step) {
    record->last_metrics_step = p.step();
    record->last_progress = Now();
    v1::JobEvent event;
    v1::StepMetrics* m = event.mutable_step_metrics();
    m->set_stage(p.stage());
    m->set_step(p.step());
    m->set_loss(p.loss());
    m->set_learning_rate(p.learning_rate());
    m->set_grad_norm(p.grad_norm());
    m->set_tokens_per_second(p.tokens_per_second());
    m->set_tokens_seen(p.tokens_seen());
    m->set_skipped_steps(p.skipped_steps());
    m->set_eta_seconds(p.eta_seconds());
    m->set_total_steps(total);
    AddEventLocked(*record, std::move(event), batch);
  }
  if (p.has_eval_loss() && p.step() > record->last_eval_step) {
    record->last_eval_step = p.step();
    v1::JobEvent event;
    v1::EvalMetrics* m = event.mutable_eval_metrics();
    m->set_stage(p.stage());
    m->set_step(p.step());
    m->set_loss(p.eval_loss());
    m->set_tokens(p.tokens_seen());
    AddEventLocked(*record, std::move(event), batch);
  }
  const bool eval_tasks = AddEvalTaskEventsLocked(*record, p, batch);
  if (new_step || p.has_eval_loss() || eval_tasks) batch.PutJob(job);
}

// One eval_task event per result of a stage end's tasks; a progress resent (every heartbeat
// repeats the last one) or a stage evaluated again after a restart adds nothing.
bool Coordinator::AddEvalTaskEventsLocked(JobRecord& record, const v1::WorkerProgress& p,
                                          StoreBatch& batch) {
  if (p.eval_tasks().empty() || p.step() <= record.last_eval_task_step) return false;
  record.last_eval_task_step = p.step();
  for (const v1::EvalTaskResult& result : p.eval_tasks()) {
    v1::JobEvent event;
    *event.mutable_eval_task() = result;
    // The step the results are of is the progress's, whatever the result says.
    event.mutable_eval_task()->set_step(p.step());
    AddEventLocked(record, std::move(event), batch);
  }
  return true;
}

void Coordinator::HandleIdleMemberLocked(WorkerRecord& worker, StoreBatch& batch) {
  if (worker.worker.job().empty()) return;
  auto it = jobs_by_id_.find(Id(worker.worker.job()));
  if (it == jobs_by_id_.end() || !it->second->round.live) return;
  JobRecord& record = *it->second;
  Round& round = record.round;
  const int64_t rank = worker.worker.rank();
  if (rank >= static_cast<int64_t>(round.members.size()) ||
      round.members[rank] != Id(worker.worker.name())) {
    return;
  }
  if (record.job.state() == v1::JOB_STATE_CANCELLING) {
    MarkStoppedLocked(record, rank, batch);
    return;
  }
  // After a coordinator restart an idle member either finished or never got its assignment.
  if (round.restored && round.completed.count(rank) == 0 && round.delivered.count(rank) == 0) {
    auto& steps = checkpoints_[Id(record.job.name())];
    auto c = steps.find(round.end_step);
    if (c != steps.end() && c->second.state() == v1::CHECKPOINT_STATE_COMMITTED) {
      round.completed.insert(rank);
      if (round.completed.size() == round.members.size()) FinishRoundLocked(record, batch);
    } else if (std::none_of(worker.pending.begin(), worker.pending.end(),
                            [](const v1::Directive& d) { return d.has_assign(); }) &&
               rank < static_cast<int64_t>(round.assignments.size())) {
      v1::Directive directive;
      *directive.mutable_assign() = round.assignments[rank];
      worker.pending.push_back(std::move(directive));
    }
  }
}

void Coordinator::MarkStoppedLocked(JobRecord& record, int64_t rank, StoreBatch& batch) {
  Round& round = record.round;
  if (!round.live || record.job.state() != v1::JOB_STATE_CANCELLING) return;
  round.stopped.insert(rank);
  if (round.stopped.size() < round.members.size()) return;
  const std::string message = record.job.state_message();
  ReleaseRoundLocked(record, "", batch);
  SetStateLocked(record, v1::JOB_STATE_CANCELLED, message, batch);
}

void Coordinator::ReleaseRoundLocked(JobRecord& record, const std::string& abort_reason,
                                     StoreBatch& batch) {
  Round& round = record.round;
  if (!round.live) return;
  v1::Job& job = record.job;
  for (const std::string& id : round.members) {
    auto it = workers_by_id_.find(id);
    if (it == workers_by_id_.end()) continue;
    WorkerRecord& w = *it->second;
    std::erase_if(w.pending, [&](const v1::Directive& d) {
      return d.has_assign() && d.assign().job() == job.name();
    });
    if (!abort_reason.empty()) {
      v1::Directive directive;
      directive.mutable_abort()->set_job(job.name());
      directive.mutable_abort()->set_round(round.number);
      directive.mutable_abort()->set_reason(abort_reason);
      w.pending.push_back(std::move(directive));
    }
    if (w.worker.job() == job.name()) {
      if (w.worker.state() != v1::WORKER_STATE_LOST) {
        w.worker.set_state(w.draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
      }
      w.worker.clear_job();
      w.worker.set_rank(0);
      PutWorkerLocked(w, batch);
    }
  }
  AbortKeyWaitersLocked(round, absl::StrCat("round ", round.number, " of ", job.name(), " ended"));
  auto& steps = checkpoints_[Id(job.name())];
  for (auto& [step, ranks] : round.checkpoint_ranks) {
    auto c = steps.find(step);
    if (c != steps.end() && c->second.state() == v1::CHECKPOINT_STATE_WRITING) {
      c->second.set_state(v1::CHECKPOINT_STATE_FAILED);
      batch.PutCheckpoint(c->second);
      if (options_.metrics != nullptr) options_.metrics->CheckpointFailed();
    }
  }
  round.live = false;
  round.kv.clear();
  round.kv_bytes = 0;
  round.checkpoint_ranks.clear();
  job.clear_workers();
  batch.PutJob(job);
}

void Coordinator::FailRoundLocked(JobRecord& record, FailureKind kind, const std::string& reason,
                                  StoreBatch& batch) {
  v1::Job& job = record.job;
  ReleaseRoundLocked(record, reason, batch);
  if (kind == FailureKind::kFatal) {
    SetStateLocked(record, v1::JOB_STATE_FAILED, reason, batch);
    return;
  }
  if (kind == FailureKind::kDrained) {
    QTRAIN_LOG(INFO) << job.name() << ": re-forming its group (" << reason << ")";
    record.failed_at = Now();
    SetStateLocked(record, v1::JOB_STATE_RESTARTING, reason, batch);
    return;
  }
  const int64_t allowed = job.spec().world().max_restarts();
  if (job.restarts() >= allowed) {
    SetStateLocked(record, v1::JOB_STATE_FAILED,
                   absl::StrCat(reason, "; ", Plural(allowed, "restart"), " allowed, ",
                                job.restarts(), " used"),
                   batch);
    return;
  }
  job.set_restarts(job.restarts() + 1);
  QTRAIN_LOG(INFO) << "restart " << job.restarts() << "/" << allowed << " of " << job.name() << ": "
                   << reason;
  record.failed_at = Now();
  SetStateLocked(record, v1::JOB_STATE_RESTARTING, reason, batch);
}

void Coordinator::CheckLeasesLocked() {
  const absl::Time now = Now();
  StoreBatch batch;
  for (auto& owned : workers_) {
    WorkerRecord& w = *owned;
    if (w.worker.state() == v1::WORKER_STATE_LOST) continue;
    if (now - w.last_heartbeat <= options_.lease) continue;
    const std::string reason =
        absl::StrCat("worker ", w.worker.name(), " lost its lease (no heartbeat for ",
                     absl::FormatDuration(options_.lease), ")");
    QTRAIN_LOG(WARNING) << reason;
    if (options_.metrics != nullptr) options_.metrics->LeaseExpired();
    const std::string job_name = w.worker.job();
    const bool assigned = !w.worker.job().empty();
    const int64_t rank = w.worker.rank();
    w.worker.set_state(v1::WORKER_STATE_LOST);
    w.pending.clear();
    PutWorkerLocked(w, batch);
    if (!assigned) continue;
    auto it = jobs_by_id_.find(Id(job_name));
    if (it == jobs_by_id_.end() || !it->second->round.live) continue;
    JobRecord& record = *it->second;
    if (record.job.state() == v1::JOB_STATE_CANCELLING) {
      MarkStoppedLocked(record, rank, batch);
    } else {
      FailRoundLocked(record, FailureKind::kRetryable, reason, batch);
    }
  }
  if (!batch.empty()) CommitLocked(batch).IgnoreError();
}

void Coordinator::PersistHeartbeatsLocked() {
  // Idle heartbeats are not written one by one; the time of the last one is saved here, at
  // most once per lease (and with every other change of the worker).
  const absl::Time now = Now();
  const absl::Duration period = std::max(options_.lease, absl::Seconds(5));
  if (now - last_heartbeat_persist_ < period) return;
  last_heartbeat_persist_ = now;
  StoreBatch batch;
  for (auto& w : workers_) {
    if (w->worker.state() != v1::WORKER_STATE_LOST && w->last_heartbeat != w->persisted_heartbeat) {
      PutWorkerLocked(*w, batch);
    }
  }
  if (!batch.empty()) CommitLocked(batch).IgnoreError();
}

}  // namespace qtrain::coordinator
