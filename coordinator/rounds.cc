// The end of a round: failures reported by a rank, completed assignments, stage progression.
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"

namespace qtrain::coordinator {

absl::Status Coordinator::ReportFailure(const v1::ReportFailureRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(request.code(), kMaxShortStringBytes, "code"));
  QTRAIN_RETURN_IF_ERROR(CheckLength(request.message(), kMaxMessageBytes, "message"));
  {
    absl::MutexLock lock(&mu_);
    QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindRoundLocked(request.worker(), request.job(),
                                                                request.round(), request.rank()));
    StoreBatch batch;
    if (record->job.state() == v1::JOB_STATE_CANCELLING) {
      MarkStoppedLocked(*record, request.rank(), batch);
    } else {
      const std::string what = request.message().empty() ? request.code() : request.message();
      const std::string reason = absl::StrCat(
          "rank ", request.rank(), " (", WorkerName(Id(request.worker())), ") failed",
          request.code().empty() ? "" : absl::StrCat(" with ", request.code()), ": ", what);
      QTRAIN_LOG(WARNING) << record->job.name() << " round " << request.round() << ": " << reason
                          << (request.retryable() ? " (retryable)" : "")
                          << (request.drained() ? " (drained)" : "");
      if (request.drained()) {
        FailRoundLocked(*record, FailureKind::kDrained,
                        absl::StrCat("worker ", WorkerName(Id(request.worker())),
                                     " is draining; re-forming the group"),
                        batch);
      } else if (!request.retryable()) {
        FailRoundLocked(*record, FailureKind::kFatal, what, batch);
      } else {
        FailRoundLocked(*record, FailureKind::kRetryable, reason, batch);
      }
    }
    QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
    ScheduleLocked();
  }
  RunDeferred();
  return absl::OkStatus();
}

absl::Status Coordinator::CompleteAssignment(const v1::CompleteAssignmentRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(request.final_directory(), kMaxPathBytes, "final_directory"));
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<JobRecord*> found =
        FindRoundLocked(request.worker(), request.job(), request.round(), request.rank());
    if (absl::IsFailedPrecondition(found.status()) && AlreadyCompletedLocked(request)) {
      return absl::OkStatus();  // a retry after the round moved on
    }
    QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, std::move(found));
    Round& round = record->round;
    v1::Job& job = record->job;
    if (round.completed.count(request.rank())) return absl::OkStatus();
    if (request.step() != round.end_step) {
      return absl::FailedPreconditionError(absl::StrCat("step: the assignment of round ",
                                                        round.number, " ends at step ",
                                                        round.end_step, ", not ", request.step()));
    }
    auto& steps = checkpoints_[Id(job.name())];
    auto c = steps.find(round.end_step);
    const bool committed = c != steps.end() && c->second.state() == v1::CHECKPOINT_STATE_COMMITTED;
    // In a group, a rank may finish before the others have reported their files of the
    // stage's last checkpoint: its own report is enough here, and the round ends (below) once
    // every rank has completed, by which time every rank has reported and the checkpoint is
    // committed.
    const auto reported = round.checkpoint_ranks.find(round.end_step);
    const bool reported_by_rank =
        reported != round.checkpoint_ranks.end() && reported->second.count(request.rank()) > 0;
    if (!committed && !reported_by_rank) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the checkpoint of step ", round.end_step, " (",
          CheckpointName(Id(job.name()), round.end_step), ") is not committed; commit it first"));
    }
    const bool last_stage = round.stage + 1 == job.spec().curriculum_size();
    if (last_stage && request.rank() == 0) {
      if (request.final_directory().empty()) {
        return absl::InvalidArgumentError(
            "final_directory: required from rank 0 on the job's last stage");
      }
      std::error_code ec;
      const std::filesystem::path model =
          std::filesystem::path(request.final_directory()) / "model.safetensors";
      if (!std::filesystem::is_regular_file(model, ec)) {
        return absl::FailedPreconditionError(
            absl::StrCat("final_directory: ", model.string(), " does not exist"));
      }
    }
    round.completed.insert(request.rank());
    StoreBatch batch;
    const bool all_committed = [&] {
      auto done = steps.find(round.end_step);
      return done != steps.end() && done->second.state() == v1::CHECKPOINT_STATE_COMMITTED;
    }();
    if (round.completed.size() == round.members.size() && all_committed) {
      FinishRoundLocked(*record, batch);
    }
    QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
    ScheduleLocked();
  }
  RunDeferred();
  return absl::OkStatus();
}

bool Coordinator::AlreadyCompletedLocked(const v1::CompleteAssignmentRequest& request) {
  absl::StatusOr<std::string> id = ParseJobName(request.job(), "job");
  if (!id.ok()) return false;
  auto it = jobs_by_id_.find(*id);
  if (it == jobs_by_id_.end()) return false;
  const JobRecord& record = *it->second;
  const int64_t stage = request.stage();
  if (request.round() >= record.job.round() && record.round.live) return false;
  if (stage < 0 || stage + 1 >= static_cast<int64_t>(record.stage_starts.size()) ||
      request.step() != record.stage_starts[stage + 1]) {
    return false;
  }
  // The stage's final checkpoint is committed and the job went past it.
  return CommittedWithRankLocked(request.job(), request.step(), request.rank()) != nullptr &&
         (record.job.state() == v1::JOB_STATE_SUCCEEDED || record.job.progress().stage() > stage ||
          (!record.round.live && record.job.progress().step() >= request.step()));
}

void Coordinator::FinishRoundLocked(JobRecord& record, StoreBatch& batch) {
  v1::Job& job = record.job;
  const int stage = record.round.stage;
  const bool last_stage = stage + 1 == job.spec().curriculum_size();
  ReleaseRoundLocked(record, "", batch);
  job.mutable_progress()->set_step(record.stage_starts[stage + 1]);
  if (last_stage) {
    SetStateLocked(record, v1::JOB_STATE_SUCCEEDED, "", batch);
    return;
  }
  // Re-queued at its original FIFO position for the next stage.
  SetStateLocked(record, v1::JOB_STATE_SCHEDULING,
                 absl::StrCat("stage ", stage, " (", job.spec().curriculum(stage).name(),
                              ") done; scheduling stage ", stage + 1),
                 batch);
}

}  // namespace qtrain::coordinator
