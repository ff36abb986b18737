// The checkpoint registry: commits by every rank of a round, file checks, retention.
#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"
#include "coordinator/time_util.h"

namespace qtrain::coordinator {
namespace {

bool IsHex64(absl::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return absl::ascii_isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
         });
}

// A relative path that stays inside its directory.
bool IsSafeRelativePath(absl::string_view path) {
  if (path.empty() || path.size() > kMaxPathBytes || path.front() == '/') return false;
  for (const auto& part : std::filesystem::path(std::string(path))) {
    if (part == ".." || part == ".") return false;
  }
  return path.find('\0') == absl::string_view::npos;
}

absl::Status CheckFiles(const v1::CommitCheckpointRequest& r) {
  if (r.files_size() > kMaxCheckpointFiles) {
    return absl::InvalidArgumentError(absl::StrCat("files: at most ", kMaxCheckpointFiles));
  }
  std::set<absl::string_view> seen;
  for (int i = 0; i < r.files_size(); ++i) {
    const v1::CheckpointFile& f = r.files(i);
    const std::string field = absl::StrCat("files[", i, "]");
    if (!IsSafeRelativePath(f.path())) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".path: must be a relative path inside the checkpoint directory"));
    }
    if (!seen.insert(f.path()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".path: ", f.path(), " is listed twice"));
    }
    if (!f.sha256().empty() && !IsHex64(f.sha256())) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".sha256: not 64 lowercase hex digits"));
    }
    if (f.size_bytes() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".size_bytes: must be >= 0"));
    }
  }
  if (!r.data_plan_sha256().empty() && !IsHex64(r.data_plan_sha256())) {
    return absl::InvalidArgumentError("data_plan_sha256: not 64 lowercase hex digits");
  }
  return absl::OkStatus();
}

absl::Status CheckFilesOnDisk(const v1::CommitCheckpointRequest& r) {
  for (const v1::CheckpointFile& f : r.files()) {
    const std::filesystem::path path = std::filesystem::path(r.directory()) / f.path();
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::is_regular_file(status)) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint file ", path.string(), " is missing (or not a regular file)"));
    }
    const uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec || static_cast<int64_t>(size) != f.size_bytes()) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint file ", path.string(), " has ",
                                                        ec ? 0 : size, " bytes, not the ",
                                                        f.size_bytes(), " reported"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::CommitCheckpointResponse> Coordinator::CommitCheckpoint(
    const v1::CommitCheckpointRequest& request) {
  absl::StatusOr<v1::CommitCheckpointResponse> response = ReportCheckpoint(request);
  if (!response.ok() && options_.metrics != nullptr) options_.metrics->CheckpointFailed();
  return response;
}

absl::StatusOr<v1::CommitCheckpointResponse> Coordinator::ReportCheckpoint(
    const v1::CommitCheckpointRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckLength(request.directory(), kMaxPathBytes, "directory"));
  QTRAIN_RETURN_IF_ERROR(CheckFiles(request));
  absl::MutexLock lock(&mu_);
  absl::StatusOr<JobRecord*> found =
      FindRoundLocked(request.worker(), request.job(), request.round(), request.rank());
  if (absl::IsFailedPrecondition(found.status())) {
    // A retry whose first try was answered after all (the reply was lost) while the round
    // moved on: the checkpoint it reported for is committed with this rank's files.
    if (const v1::Checkpoint* done =
            CommittedWithRankLocked(request.job(), request.step(), request.rank())) {
      v1::CommitCheckpointResponse response;
      *response.mutable_checkpoint() = *done;
      return response;
    }
  }
  QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, std::move(found));
  Round& round = record->round;
  v1::Job& job = record->job;
  if (request.step() <= round.start_step || request.step() > round.end_step) {
    return absl::InvalidArgumentError(absl::StrCat("step: ", request.step(),
                                                   " is outside this round's steps (",
                                                   round.start_step, ", ", round.end_step, "]"));
  }
  const std::string directory =
      absl::StrCat(job.run_directory(), "/checkpoints/", CheckpointDirName(request.step()));
  // The job's own layout only (retention deletes these directories).
  std::string given = std::filesystem::path(request.directory()).lexically_normal().string();
  while (given.size() > 1 && given.back() == '/') given.pop_back();
  if (given != directory) {
    return absl::InvalidArgumentError(
        absl::StrCat("directory: must be ", directory, " (got ", request.directory(), ")"));
  }
  auto& steps = checkpoints_[Id(job.name())];
  auto existing = steps.find(request.step());
  if (existing != steps.end() && existing->second.state() == v1::CHECKPOINT_STATE_COMMITTED) {
    v1::CommitCheckpointResponse response;
    *response.mutable_checkpoint() = existing->second;
    return response;
  }
  std::set<int64_t>& ranks = round.checkpoint_ranks[request.step()];
  if (ranks.count(request.rank()) && existing != steps.end()) {
    v1::CommitCheckpointResponse response;  // a retry of the same report
    *response.mutable_checkpoint() = existing->second;
    return response;
  }
  QTRAIN_RETURN_IF_ERROR(CheckFilesOnDisk(request));
  const absl::Time now = Now();
  v1::Checkpoint checkpoint;
  if (existing != steps.end() && existing->second.state() == v1::CHECKPOINT_STATE_WRITING &&
      !ranks.empty()) {
    checkpoint = existing->second;
  } else {
    checkpoint.set_name(CheckpointName(Id(job.name()), request.step()));
    checkpoint.set_step(request.step());
    checkpoint.set_directory(directory);
    *checkpoint.mutable_create_time() = ToProto(now);
  }
  checkpoint.set_state(v1::CHECKPOINT_STATE_WRITING);
  checkpoint.set_stage(request.stage());
  checkpoint.set_tokens_seen(request.tokens_seen());
  if (!request.data_plan_sha256().empty()) {
    checkpoint.set_data_plan_sha256(request.data_plan_sha256());
  }
  for (v1::CheckpointFile f : request.files()) {
    f.set_rank(request.rank());
    *checkpoint.add_files() = std::move(f);
  }
  ranks.insert(request.rank());
  StoreBatch batch;
  if (ranks.size() == round.members.size()) {
    checkpoint.set_state(v1::CHECKPOINT_STATE_COMMITTED);
    *checkpoint.mutable_commit_time() = ToProto(now);
    job.set_latest_checkpoint(checkpoint.name());
    *job.mutable_update_time() = ToProto(now);
    batch.PutJob(job);
    v1::JobEvent event;
    *event.mutable_checkpoint() = checkpoint;
    AddEventLocked(*record, std::move(event), batch);
    QTRAIN_LOG(INFO) << "checkpoint committed: " << checkpoint.name() << " ("
                     << checkpoint.files_size() << " files)";
  }
  steps[request.step()] = checkpoint;
  batch.PutCheckpoint(checkpoint);
  if (checkpoint.state() == v1::CHECKPOINT_STATE_COMMITTED) ApplyRetentionLocked(*record, batch);
  QTRAIN_RETURN_IF_ERROR(CommitLocked(batch));
  if (checkpoint.state() == v1::CHECKPOINT_STATE_COMMITTED && options_.metrics != nullptr) {
    options_.metrics->CheckpointCommitted();
  }
  v1::CommitCheckpointResponse response;
  *response.mutable_checkpoint() = steps[request.step()];
  return response;
}

const v1::Checkpoint* Coordinator::CommittedWithRankLocked(absl::string_view job, int64_t step,
                                                           int64_t rank) {
  absl::StatusOr<std::string> id = ParseJobName(job, "job");
  if (!id.ok()) return nullptr;
  auto steps = checkpoints_.find(*id);
  if (steps == checkpoints_.end()) return nullptr;
  auto c = steps->second.find(step);
  if (c == steps->second.end() || c->second.state() != v1::CHECKPOINT_STATE_COMMITTED) {
    return nullptr;
  }
  for (const v1::CheckpointFile& f : c->second.files()) {
    if (f.rank() == rank) return &c->second;
  }
  return nullptr;
}

void Coordinator::ApplyRetentionLocked(JobRecord& record, StoreBatch& batch) {
  const int64_t keep_last = record.job.spec().checkpoint().keep_last();
  if (keep_last <= 0) return;
  const std::set<int64_t> stage_ends(record.stage_starts.begin() + 1, record.stage_starts.end());
  auto& steps = checkpoints_[Id(record.job.name())];
  int64_t newer = 0;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    v1::Checkpoint& c = it->second;
    if (c.state() != v1::CHECKPOINT_STATE_COMMITTED) continue;
    if (newer++ < keep_last || stage_ends.count(c.step())) continue;
    // Only a directory of this job's layout is ever removed.
    const std::string expected =
        absl::StrCat(record.job.run_directory(), "/checkpoints/", CheckpointDirName(c.step()));
    if (c.directory() == expected) {
      std::error_code ec;
      std::filesystem::remove_all(c.directory(), ec);
      if (ec) {
        QTRAIN_LOG(WARNING) << "cannot delete " << c.directory() << ": " << ec.message();
        continue;
      }
    }
    c.set_state(v1::CHECKPOINT_STATE_DELETED);
    batch.PutCheckpoint(c);
    QTRAIN_LOG(INFO) << "checkpoint deleted by retention: " << c.name();
  }
}

}  // namespace qtrain::coordinator
