#include "coordinator/coordinator.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/names.h"
#include "coordinator/time_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "worker/model/model_source.h"

namespace qtrain::coordinator {
namespace {

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// Bounds ValidateJobSpec does not check (sizes of free-form strings), one problem per line.
void CheckSpecBounds(const v1::JobSpec& spec, std::vector<std::string>& problems) {
  if (spec.ByteSizeLong() > kMaxJobSpecBytes) {
    problems.push_back(absl::StrCat("spec: at most ", kMaxJobSpecBytes, " bytes"));
  }
  auto check = [&](absl::string_view value, size_t max, absl::string_view field) {
    if (absl::Status s = CheckLength(value, max, field); !s.ok()) {
      problems.push_back(std::string(s.message()));
    }
  };
  check(spec.tokenizer(), kMaxPathBytes, "spec.tokenizer");
  check(spec.data().manifest(), kMaxPathBytes, "spec.data.manifest");
  if (spec.model().source_case() == v1::ModelSpec::kInitFrom) {
    check(spec.model().init_from(), kMaxPathBytes, "spec.model.init_from");
  }
  check(spec.model().preset(), kMaxShortStringBytes, "spec.model.preset");
  check(spec.name(), kMaxShortStringBytes, "spec.name");
  if (spec.labels_size() > kMaxLabels) {
    problems.push_back(absl::StrCat("spec.labels: at most ", kMaxLabels, " labels"));
  }
  for (const auto& [key, value] : spec.labels()) {
    check(key, kMaxLabelBytes, "spec.labels (key)");
    check(value, kMaxLabelBytes, absl::StrCat("spec.labels[", key.substr(0, 64), "]"));
  }
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    check(spec.curriculum(i).name(), kMaxShortStringBytes,
          absl::StrCat("spec.curriculum[", i, "].name"));
  }
}

}  // namespace

Coordinator::Coordinator(const CoordinatorOptions& options) : options_(options) {}
Coordinator::~Coordinator() {
  // Pending GetKey calls are answered so that no RPC is left waiting.
  {
    absl::MutexLock lock(&mu_);
    for (auto& record : jobs_) AbortKeyWaitersLocked(record->round, "the coordinator is stopping");
  }
  RunDeferred();
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    const CoordinatorOptions& options) {
  if (options.store == nullptr) return absl::InvalidArgumentError("coordinator: no store");
  if (options.run_root.empty()) return absl::InvalidArgumentError("--run-root: required");
  if (options.lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--lease-seconds: must be > 0");
  }
  if (options.settle < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--settle-seconds: must be >= 0");
  }
  CoordinatorOptions resolved = options;
  if (!resolved.clock) resolved.clock = [] { return absl::Now(); };
  if (!resolved.plan_data) return absl::InvalidArgumentError("coordinator: no data planner");
  std::error_code ec;
  std::filesystem::create_directories(resolved.run_root, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--run-root ", resolved.run_root, ": cannot create it: ", ec.message()));
  }
  resolved.run_root = std::filesystem::absolute(resolved.run_root).lexically_normal().string();
  while (resolved.run_root.size() > 1 && resolved.run_root.back() == '/') {
    resolved.run_root.pop_back();
  }
  std::unique_ptr<Coordinator> coordinator(new Coordinator(resolved));
  QTRAIN_RETURN_IF_ERROR(coordinator->Load());
  return coordinator;
}

absl::Duration Coordinator::heartbeat_interval() const {
  return std::clamp(options_.lease / 5, absl::Milliseconds(100), absl::Milliseconds(1000));
}

std::string Coordinator::Id(absl::string_view resource) const {
  const size_t slash = resource.find('/');
  return std::string(slash == absl::string_view::npos ? resource : resource.substr(slash + 1));
}

absl::Status Coordinator::CommitLocked(const StoreBatch& batch) {
  absl::Status status;
  if (!batch.empty()) {
    absl::MutexLock lock(&store_mu_);
    status = options_.store->Commit(batch);
  }
  if (!status.ok()) {
    QTRAIN_LOG(ERROR) << "store commit failed: " << status;
    evented_.clear();
    return absl::UnavailableError(absl::StrCat("the coordinator's store: ", status.message()));
  }
  std::vector<JobRecord*> evented;
  evented.swap(evented_);
  for (JobRecord* record : evented) WakeWatchersLocked(*record);
  return absl::OkStatus();
}

void Coordinator::AddEventLocked(JobRecord& record, v1::JobEvent event, StoreBatch& batch) {
  event.set_job(record.job.name());
  event.set_sequence(++record.last_sequence);
  *event.mutable_time() = ToProto(Now());
  batch.AppendEvent(event);
  if (std::find(evented_.begin(), evented_.end(), &record) == evented_.end()) {
    evented_.push_back(&record);
  }
}

void Coordinator::SetStateLocked(JobRecord& record, v1::JobState state, std::string message,
                                 StoreBatch& batch) {
  v1::Job& job = record.job;
  const v1::JobState from = job.state();
  const absl::Time now = Now();
  job.set_state(state);
  job.set_state_message(message);
  *job.mutable_update_time() = ToProto(now);
  if (state == v1::JOB_STATE_RUNNING && !job.has_start_time()) {
    *job.mutable_start_time() = ToProto(now);
  }
  if (state == v1::JOB_STATE_RUNNING && from != state) record.last_progress = now;
  if (IsTerminal(state)) *job.mutable_end_time() = ToProto(now);
  batch.PutJob(job);
  if (from == state) return;
  v1::JobEvent event;
  v1::StateChanged* changed = event.mutable_state_changed();
  changed->set_from(from);
  changed->set_to(state);
  changed->set_message(message);
  AddEventLocked(record, std::move(event), batch);
  QTRAIN_LOG(INFO) << job.name() << ": " << v1::JobState_Name(from) << " -> "
                   << v1::JobState_Name(state) << (message.empty() ? "" : ": ") << message;
}

absl::StatusOr<Coordinator::JobRecord*> Coordinator::FindJobLocked(absl::string_view name,
                                                                   absl::string_view field) {
  QTRAIN_ASSIGN_OR_RETURN(std::string id, ParseJobName(name, field));
  auto it = jobs_by_id_.find(id);
  if (it == jobs_by_id_.end()) {
    return absl::NotFoundError(absl::StrCat("no job named ", JobName(id)));
  }
  return it->second;
}

absl::StatusOr<Coordinator::WorkerRecord*> Coordinator::FindWorkerLocked(absl::string_view name,
                                                                         absl::string_view field) {
  QTRAIN_ASSIGN_OR_RETURN(std::string id, ParseWorkerName(name, field));
  auto it = workers_by_id_.find(id);
  if (it == workers_by_id_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no worker named ", WorkerName(id), "; register again"));
  }
  return it->second;
}

absl::StatusOr<Coordinator::JobRecord*> Coordinator::FindRoundLocked(absl::string_view worker,
                                                                     absl::string_view job,
                                                                     int64_t round,
                                                                     std::optional<int64_t> rank) {
  QTRAIN_ASSIGN_OR_RETURN(WorkerRecord * w, FindWorkerLocked(worker, "worker"));
  QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindJobLocked(job, "job"));
  if (round <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("round: must be > 0 (got ", round, ")"));
  }
  const Round& r = record->round;
  if (!r.live || round != record->job.round()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", round, " of ", record->job.name(), " is over; the current round is ",
        record->job.round(),
        r.live ? "" : absl::StrCat(" (", v1::JobState_Name(record->job.state()), ", no group)")));
  }
  if (rank.has_value()) {
    if (*rank < 0 || *rank >= static_cast<int64_t>(r.members.size())) {
      return absl::InvalidArgumentError(absl::StrCat("rank: ", *rank, " is not in [0, ",
                                                     r.members.size(), ") for round ", round));
    }
    if (r.members[*rank] != w->worker.name().substr(8)) {
      return absl::FailedPreconditionError(absl::StrCat("rank ", *rank, " of round ", round, " of ",
                                                        record->job.name(), " is not ",
                                                        w->worker.name()));
    }
  }
  return record;
}

// ------------------------------------------------------------------------------------------
// Jobs

absl::StatusOr<v1::Job> Coordinator::CreateJob(const v1::CreateJobRequest& request) {
  std::vector<std::string> problems;
  if (request.request_id().empty()) {
    problems.push_back("request_id: required (e.g. a UUID; retries reuse it)");
  } else if (absl::Status s = CheckLength(request.request_id(), kMaxRequestIdBytes, "request_id");
             !s.ok()) {
    problems.push_back(std::string(s.message()));
  }
  v1::JobSpec spec = request.spec();
  ApplyJobSpecDefaults(&spec);
  CheckSpecBounds(spec, problems);
  if (problems.empty() || spec.ByteSizeLong() <= kMaxJobSpecBytes) {
    absl::Status valid = ValidateJobSpec(spec, model::ModelAwareJobSpecOptions());
    if (!valid.ok()) {
      for (absl::string_view line : absl::StrSplit(valid.message(), '\n')) {
        if (!line.empty()) problems.push_back(absl::StrCat("spec.", line));
      }
    }
  }
  if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  absl::StatusOr<int64_t> total_steps = TotalSteps(spec);
  if (!total_steps.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("spec.", total_steps.status().message()));
  }

  absl::MutexLock lock(&mu_);
  if (auto it = jobs_by_request_.find(request.request_id()); it != jobs_by_request_.end()) {
    const v1::Job& existing = it->second->job;
    if (google::protobuf::util::MessageDifferencer::Equals(existing.spec(), spec)) {
      return existing;
    }
    return absl::AlreadyExistsError(absl::StrCat("request_id ", request.request_id(),
                                                 " already created ", existing.name(),
                                                 " with another spec"));
  }
  const int64_t number = next_job_number_;
  const std::string id =
      absl::StrCat(spec.name().empty() ? std::string("job") : spec.name(), "-", number);
  const std::string run_directory = absl::StrCat(options_.run_root, "/", id);
  std::error_code ec;
  std::filesystem::create_directories(run_directory, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the run directory ", run_directory, ": ", ec.message()));
  }
  auto record = std::make_unique<JobRecord>();
  record->ordinal = static_cast<int64_t>(jobs_.size());
  QTRAIN_ASSIGN_OR_RETURN(record->stage_starts, StageStartSteps(spec));
  v1::Job& job = record->job;
  job.set_name(JobName(id));
  *job.mutable_spec() = std::move(spec);
  job.set_request_id(request.request_id());
  job.set_run_directory(run_directory);
  job.mutable_progress()->set_total_steps(*total_steps);
  *job.mutable_create_time() = ToProto(Now());
  record->last_progress = Now();

  StoreBatch batch;
  batch.SetNextJobNumber(number + 1);
  SetStateLocked(*record, v1::JOB_STATE_QUEUED, "", batch);
  absl::Status committed = CommitLocked(batch);
  if (!committed.ok()) {
    if (absl::IsAlreadyExists(committed)) {
      return absl::AlreadyExistsError(
          absl::StrCat("request_id ", request.request_id(), " is already used"));
    }
    return committed;
  }
  next_job_number_ = number + 1;
  JobRecord* raw = record.get();
  jobs_by_id_[id] = raw;
  jobs_by_request_[job.request_id()] = raw;
  jobs_.push_back(std::move(record));
  QTRAIN_LOG(INFO) << "job created: " << raw->job.name() << " (request " << raw->job.request_id()
                   << ", " << *total_steps << " steps, " << raw->job.spec().world().min_workers()
                   << "-" << raw->job.spec().world().max_workers() << " workers)";
  v1::Job reply = raw->job;
  ScheduleLocked();
  return reply;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const v1::GetJobRequest& request) {
  absl::MutexLock lock(&mu_);
  QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindJobLocked(request.name(), "name"));
  return record->job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const v1::ListJobsRequest& request) {
  QTRAIN_ASSIGN_OR_RETURN(int page_size, CheckPageSize(request.page_size(), "page_size"));
  if (request.states_size() > kMaxRepeated) {
    return absl::InvalidArgumentError(absl::StrCat("states: at most ", kMaxRepeated));
  }
  std::set<int> states;
  for (int s : request.states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("states: ", s, " is not a job state"));
    }
    states.insert(s);
  }
  absl::MutexLock lock(&mu_);
  int64_t before = static_cast<int64_t>(jobs_.size());
  if (!request.page_token().empty()) {
    QTRAIN_ASSIGN_OR_RETURN(before, DecodePageToken(request.page_token(), "jobs", "page_token"));
    before = std::min(before, static_cast<int64_t>(jobs_.size()));
  }
  v1::ListJobsResponse response;
  for (int64_t i = before - 1; i >= 0; --i) {
    const v1::Job& job = jobs_[i]->job;
    if (!states.empty() && !states.count(job.state())) continue;
    if (response.jobs_size() == page_size) {
      response.set_next_page_token(EncodePageToken("jobs", i + 1));
      break;
    }
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const v1::CancelJobRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(request.reason(), kMaxShortStringBytes, "reason"));
  absl::MutexLock lock(&mu_);
  QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindJobLocked(request.name(), "name"));
  v1::Job& job = record->job;
  switch (job.state()) {
    case v1::JOB_STATE_CANCELLED:
    case v1::JOB_STATE_CANCELLING:
      return job;
    case v1::JOB_STATE_SUCCEEDED:
    case v1::JOB_STATE_FAILED:
      return absl::FailedPreconditionError(absl::StrCat(
          job.name(), " is already ", v1::JobState_Name(job.state()), "; nothing to cancel"));
    default:
      break;
  }
  const std::string reason = request.reason().empty()
                                 ? std::string("cancelled")
                                 : absl::StrCat("cancelled: ", request.reason());
  StoreBatch batch;
  Round& round = record->round;
  if (round.live && !round.delivered.empty()) {
    // A child may be running: abort it and wait until every rank stopped.
    for (size_t rank = 0; rank < round.members.size(); ++rank) {
      if (round.delivered.count(rank) == 0) round.stopped.insert(rank);
    }
    SetStateLocked(*record, v1::JOB_STATE_CANCELLING, reason, batch);
    for (size_t rank = 0; rank < round.members.size(); ++rank) {
      auto it = workers_by_id_.find(round.members[rank]);
      if (it == workers_by_id_.end()) continue;
      WorkerRecord& w = *it->second;
      std::erase_if(w.pending, [](const v1::Directive& d) { return d.has_assign(); });
      v1::Directive directive;
      directive.mutable_abort()->set_job(job.name());
      directive.mutable_abort()->set_round(round.number);
      directive.mutable_abort()->set_reason(reason);
      w.pending.push_back(std::move(directive));
      if (w.worker.state() == v1::WORKER_STATE_LOST) round.stopped.insert(rank);
    }
    AbortKeyWaitersLocked(round, absl::StrCat(job.name(), " is being cancelled"));
    if (round.stopped.size() == round.members.size()) {
      ReleaseRoundLocked(*record, "", batch);
      SetStateLocked(*record, v1::JOB_STATE_CANCELLED, reason, batch);
    }
  } else {
    if (round.live) ReleaseRoundLocked(*record, "", batch);
    SetStateLocked(*record, v1::JOB_STATE_CANCELLED, reason, batch);
  }
  QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
  v1::Job reply = job;
  ScheduleLocked();
  return reply;
}

absl::StatusOr<v1::ListCheckpointsResponse> Coordinator::ListCheckpoints(
    const v1::ListCheckpointsRequest& request) {
  QTRAIN_ASSIGN_OR_RETURN(int page_size, CheckPageSize(request.page_size(), "page_size"));
  absl::MutexLock lock(&mu_);
  QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindJobLocked(request.parent(), "parent"));
  int64_t before = INT64_MAX;
  if (!request.page_token().empty()) {
    QTRAIN_ASSIGN_OR_RETURN(before,
                            DecodePageToken(request.page_token(), "checkpoints", "page_token"));
  }
  v1::ListCheckpointsResponse response;
  const auto& steps = checkpoints_[Id(record->job.name())];
  for (auto it = steps.lower_bound(before); it != steps.begin();) {
    --it;
    if (response.checkpoints_size() == page_size) {
      response.set_next_page_token(EncodePageToken("checkpoints", it->first + 1));
      break;
    }
    *response.add_checkpoints() = it->second;
  }
  return response;
}

absl::StatusOr<v1::ListWorkersResponse> Coordinator::ListWorkers(
    const v1::ListWorkersRequest& request) {
  QTRAIN_ASSIGN_OR_RETURN(int page_size, CheckPageSize(request.page_size(), "page_size"));
  absl::MutexLock lock(&mu_);
  int64_t from = 0;
  if (!request.page_token().empty()) {
    QTRAIN_ASSIGN_OR_RETURN(from, DecodePageToken(request.page_token(), "workers", "page_token"));
  }
  v1::ListWorkersResponse response;
  for (int64_t i = from; i < static_cast<int64_t>(workers_.size()); ++i) {
    if (response.workers_size() == page_size) {
      response.set_next_page_token(EncodePageToken("workers", i));
      break;
    }
    v1::Worker* w = response.add_workers();
    *w = workers_[i]->worker;
    *w->mutable_last_heartbeat_time() = ToProto(workers_[i]->last_heartbeat);
  }
  return response;
}

// ------------------------------------------------------------------------------------------

void Coordinator::Tick() {
  {
    absl::MutexLock lock(&mu_);
    CheckLeasesLocked();
    ScheduleLocked();
    ExpireKeyWaitersLocked(deferred_);
    PersistHeartbeatsLocked();
  }
  RunDeferred();
}

void Coordinator::RunDeferred() {
  std::vector<std::function<void()>> run;
  {
    absl::MutexLock lock(&mu_);
    run.swap(deferred_);
  }
  for (auto& f : run) f();
}

}  // namespace qtrain::coordinator
