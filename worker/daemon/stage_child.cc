#include "worker/daemon/stage_child.h"

#include <omp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/run_dir_lock.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "qtrain/v1/worker.pb.h"
#include "worker/daemon/parent_link.h"
#include "worker/daemon/peer_host.h"
#include "worker/daemon/watched_communicator.h"
#include "worker/daemon/work_dir.h"
#include "worker/model/flops.h"
#include "worker/model/model_source.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/job_setup.h"
#include "worker/train/trainer.h"
#include "worker/train/training_backend.h"

namespace qtrain::worker {
namespace {

namespace fs = std::filesystem;

// Set by SIGTERM/SIGINT: the child stops between two steps.
std::atomic<bool> g_stop_signal{false};

extern "C" void OnStopSignal(int) { g_stop_signal.store(true); }

// This process's resident set in bytes (/proc/self/statm); 0 when it cannot be read.
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0, resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) return 0;
  const long page = ::sysconf(_SC_PAGESIZE);
  return page > 0 ? resident_pages * page : 0;
}

// SIGTERM and SIGINT set g_stop_signal, SIGPIPE is ignored (a closed events pipe is an error of
// write(), not a death) for the life of the object.
class ScopedStopSignals {
 public:
  ScopedStopSignals() {
    g_stop_signal = false;
    struct sigaction action = {};
    action.sa_handler = OnStopSignal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, &old_term_);
    sigaction(SIGINT, &action, &old_int_);
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, &old_pipe_);
  }
  ~ScopedStopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGPIPE, &old_pipe_, nullptr);
  }
  ScopedStopSignals(const ScopedStopSignals&) = delete;
  ScopedStopSignals& operator=(const ScopedStopSignals&) = delete;

 private:
  struct sigaction old_term_ = {}, old_int_ = {}, old_pipe_ = {};
};

// QTRAIN_TEST_STEP_DELAY_MS (a test hook): milliseconds to sleep after every optimizer step.
int64_t StepDelayMsFromEnvironment() {
  const char* env = std::getenv("QTRAIN_TEST_STEP_DELAY_MS");
  int64_t ms = 0;
  if (env == nullptr || !absl::SimpleAtoi(env, &ms) || ms < 0) return 0;
  return ms;
}

// Why the child failed, and whether running the assignment again could help.
struct Failure {
  absl::Status status;
  bool retryable = true;
};

absl::StatusOr<v1::Assignment> ReadAssignment(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("--assignment: no file given");
  absl::StatusOr<std::string> text = ReadFileToString(path, size_t{64} << 20);
  if (!text.ok()) return Annotate(text.status(), "--assignment");
  v1::Assignment assignment;
  const auto parsed = google::protobuf::util::JsonStringToMessage(*text, &assignment);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--assignment ", path, " is not an Assignment in JSON: ", std::string(parsed.message())));
  }
  return assignment;
}

bool SameDirectory(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  return fs::path(a).lexically_normal() == fs::path(b).lexically_normal() ||
         fs::path(a + "/").lexically_normal() == fs::path(b + "/").lexically_normal();
}

v1::WorkerPhase ToWorkerPhase(train::TrainerPhase phase) {
  switch (phase) {
    case train::TrainerPhase::kEvaluating:
      return v1::WORKER_PHASE_EVALUATING;
    case train::TrainerPhase::kCheckpointing:
      return v1::WORKER_PHASE_CHECKPOINTING;
    default:
      return v1::WORKER_PHASE_TRAINING;
  }
}

// One run of the child: the assignment, from loading to StageDone.
class StageChild {
 public:
  StageChild(const StageChildOptions& options, v1::Assignment assignment, EventWriter& events,
             ParentLink& parent)
      : options_(options),
        assignment_(std::move(assignment)),
        events_(events),
        parent_(parent),
        step_delay_ms_(StepDelayMsFromEnvironment()) {}

  ~StageChild() { StopWatching(); }

  // OK once StageDone is written.
  absl::Status Run();
  // Whether a failure of Run() is worth another try.
  bool retryable() const { return retryable_; }
  bool stopping() const { return g_stop_signal || parent_.orphaned(); }

 private:
  absl::Status CheckAssignment();
  absl::StatusOr<RunDirLock> LockRunDirectory();
  absl::Status VerifyResumeCheckpoint() const;
  // world_size > 1: joins the group (phase RENDEZVOUS) and starts watching for a stop.
  absl::Status JoinGroup();
  GroupMember Member();
  // world.device cuda in a group with assignment backend NCCL: the device communicator.
  absl::Status JoinDeviceGroup();
  // Aborts the group's collectives once the child is stopping (a signal, or the parent gone),
  // so that an op blocked on a peer returns; runs on a thread of its own, never in a signal
  // handler.
  void WatchForStop();
  void StopWatching();
  // Whether `status`, the end of training, came from the group (a collective that failed or
  // timed out, or the rendezvous): another try, with a new group, may succeed.
  bool IsGroupFailure(const absl::Status& status) const;
  absl::Status Train(train::PreparedJob& job, std::shared_ptr<const RunDirLock> lock);
  absl::Status OnCheckpoint(const train::CheckpointInfo& info);
  void OnStep(const train::StepReport& report);
  void OnEvalTasks(const std::vector<v1::EvalTaskResult>& results);
  absl::Status Emit(const v1::StageChildEvent& event);
  absl::Status EmitPhase(v1::WorkerPhase phase);
  std::string CheckpointDirectory() const {
    return options_checkpoint_root_ + absl::StrFormat("/step-%012d", assignment_.start_step());
  }

  const StageChildOptions& options_;
  const v1::Assignment assignment_;
  EventWriter& events_;
  ParentLink& parent_;
  const int64_t step_delay_ms_;
  std::string options_checkpoint_root_;  // <run_directory>/checkpoints
  std::vector<int64_t> stage_start_;
  model::ModelConfig model_config_;   // the job's model (the stages differ only in RoPE)
  v1::WorkerProgress last_progress_;  // of the last step, repeated with the eval results
  bool retryable_ = true;
  absl::Status emit_error_;  // the first failed write of an event from a trainer callback
  bool join_failed_ = false;
  // The group (world_size > 1); outlives the trainer that uses it and the watcher.
  std::unique_ptr<WatchedCommunicator> group_;
  // Its device communicator (world.device cuda, where one was joined): set once, under
  // watch_mu_, so that the watcher aborts it too.
  std::unique_ptr<WatchedCommunicator> device_group_ ABSL_GUARDED_BY(watch_mu_);
  std::thread watcher_;
  mutable absl::Mutex watch_mu_;
  bool watch_done_ ABSL_GUARDED_BY(watch_mu_) = false;
};

GroupMember StageChild::Member() {
  const v1::Assignment& a = assignment_;
  GroupMember member;
  member.rank = static_cast<int>(a.rank());
  member.world_size = static_cast<int>(a.world_size());
  member.job = a.job();
  member.round = a.round();
  member.rendezvous_prefix = a.rendezvous_prefix();
  member.worker = options_.worker;
  member.coordinator = options_.coordinator;
  member.peer_host = options_.peer_host;
  member.timeout = options_.collective_timeout;
  member.cancelled = [this] { return stopping(); };
  return member;
}

absl::Status StageChild::JoinDeviceGroup() {
  const v1::Assignment& a = assignment_;
  if (a.backend() != v1::COLLECTIVE_BACKEND_NCCL) {
    QTRAIN_LOG(INFO) << "stage child: the assignment's collectives are "
                     << v1::CollectiveBackend_Name(a.backend())
                     << ": the gradients go through the host";
    return absl::OkStatus();
  }
  if (!options_.connect_device_group) {
    return absl::FailedPreconditionError(
        "assignment: backend COLLECTIVE_BACKEND_NCCL, and this worker cannot join a device group");
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<comm::Communicator>> joined =
      options_.connect_device_group(Member());
  if (absl::IsUnimplemented(joined.status())) {  // the build: the same on every retry
    return absl::FailedPreconditionError(
        absl::StrCat("assignment: backend COLLECTIVE_BACKEND_NCCL: ", joined.status().message()));
  }
  if (!joined.ok()) {
    join_failed_ = true;
    return absl::Status(
        joined.status().code(),
        absl::StrCat("joining the device communicator of the group of ", a.world_size(),
                     " workers as rank ", a.rank(), ": ", joined.status().message()));
  }
  if (*joined == nullptr || (*joined)->rank() != static_cast<int>(a.rank()) ||
      (*joined)->world_size() != static_cast<int>(a.world_size())) {
    return absl::InternalError(absl::StrCat("joining the device communicator as rank ", a.rank(),
                                            ": the communicator has another place in it"));
  }
  QTRAIN_LOG(INFO) << "stage child: rank " << a.rank() << " joined the group's device "
                   << "communicator (" << (*joined)->backend() << ") in "
                   << absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)));
  absl::MutexLock lock(&watch_mu_);
  device_group_ = std::make_unique<WatchedCommunicator>(*std::move(joined));
  return absl::OkStatus();
}

absl::Status StageChild::JoinGroup() {
  const v1::Assignment& a = assignment_;
  if (!options_.connect_group) {
    return absl::FailedPreconditionError(absl::StrCat("assignment: world_size ", a.world_size(),
                                                      ", and this worker cannot join a group"));
  }
  if (a.rendezvous_prefix().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("assignment: rendezvous_prefix is empty (world_size ", a.world_size(), ")"));
  }
  QTRAIN_RETURN_IF_ERROR(EmitPhase(v1::WORKER_PHASE_RENDEZVOUS));
  const GroupMember member = Member();
  QTRAIN_LOG(INFO) << "stage child: joining the group of " << a.world_size() << " as rank "
                   << a.rank() << " (listening on " << options_.peer_host << ", timeout "
                   << absl::FormatDuration(options_.collective_timeout) << ")";
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<comm::Communicator>> joined = options_.connect_group(member);
  if (!joined.ok()) {
    join_failed_ = true;
    return absl::Status(joined.status().code(),
                        absl::StrCat("joining the group of ", a.world_size(), " workers as rank ",
                                     a.rank(), ": ", joined.status().message()));
  }
  if (*joined == nullptr || (*joined)->rank() != member.rank ||
      (*joined)->world_size() != member.world_size) {
    return absl::InternalError(absl::StrCat("joining the group of ", a.world_size(),
                                            " workers as rank ", a.rank(),
                                            ": the communicator has another place in it"));
  }
  group_ = std::make_unique<WatchedCommunicator>(*std::move(joined));
  QTRAIN_LOG(INFO) << "stage child: rank " << a.rank() << " of " << a.world_size()
                   << " joined its group (" << group_->backend() << ") in "
                   << absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Milliseconds(1)));
  watcher_ = std::thread([this] { WatchForStop(); });
  return absl::OkStatus();
}

void StageChild::WatchForStop() {
  absl::MutexLock lock(&watch_mu_);
  while (!watch_done_) {
    if (stopping()) {
      QTRAIN_LOG(INFO) << "stage child: stopping: aborting the group's collectives";
      group_->Abort();
      if (device_group_ != nullptr) device_group_->Abort();
      return;
    }
    watch_mu_.AwaitWithTimeout(absl::Condition(&watch_done_), absl::Milliseconds(20));
  }
}

void StageChild::StopWatching() {
  {
    absl::MutexLock lock(&watch_mu_);
    watch_done_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
}

bool StageChild::IsGroupFailure(const absl::Status& status) const {
  if (status.ok()) return false;
  if (join_failed_) return !absl::IsInvalidArgument(status) && !absl::IsFailedPrecondition(status);
  if (group_ != nullptr && !group_->first_error().ok()) return true;
  absl::MutexLock lock(&watch_mu_);
  return device_group_ != nullptr && !device_group_->first_error().ok();
}

absl::Status StageChild::Emit(const v1::StageChildEvent& event) {
  absl::Status written = events_.Write(event);
  if (!written.ok()) {
    if (emit_error_.ok()) emit_error_ = written;
    parent_.MarkOrphaned(std::string(written.message()));  // nobody reads the events
  }
  return written;
}

absl::Status StageChild::EmitPhase(v1::WorkerPhase phase) {
  v1::StageChildEvent event;
  event.set_phase(phase);
  return Emit(event);
}

// What the trainer cannot check: the assignment's place in the job.
absl::Status StageChild::CheckAssignment() {
  const v1::Assignment& a = assignment_;
  if (a.job().empty()) return absl::InvalidArgumentError("assignment: job is empty");
  if (a.run_directory().empty()) {
    return absl::InvalidArgumentError("assignment: run_directory is empty");
  }
  if (a.world_size() < 1 || a.world_size() > INT32_MAX || a.rank() < 0 ||
      a.rank() >= a.world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("assignment: rank ", a.rank(), " of ", a.world_size(), " workers"));
  }
  options_checkpoint_root_ = a.run_directory() + "/checkpoints";
  if (!a.checkpoint_directory().empty() &&
      !SameDirectory(a.checkpoint_directory(), options_checkpoint_root_)) {
    return absl::InvalidArgumentError(absl::StrCat("assignment: checkpoint_directory ",
                                                   a.checkpoint_directory(), " is not ",
                                                   options_checkpoint_root_));
  }
  QTRAIN_RETURN_IF_ERROR(ValidateJobSpec(a.spec(), model::ModelAwareJobSpecOptions()));
  if (a.backend() == v1::COLLECTIVE_BACKEND_NCCL &&
      a.spec().world().device() != v1::DEVICE_KIND_CUDA) {
    return absl::InvalidArgumentError(
        "assignment: backend COLLECTIVE_BACKEND_NCCL needs a world.device cuda job");
  }
  QTRAIN_ASSIGN_OR_RETURN(stage_start_, StageStartSteps(a.spec()));
  if (a.stage() < 0 || a.stage() >= a.spec().curriculum_size()) {
    return absl::InvalidArgumentError(absl::StrCat("assignment: stage ", a.stage(),
                                                   " is not in the curriculum's 0-",
                                                   a.spec().curriculum_size() - 1));
  }
  const auto stage = static_cast<size_t>(a.stage());
  if (a.end_step() != stage_start_[stage + 1] || a.start_step() < stage_start_[stage] ||
      a.start_step() > a.end_step()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "assignment: steps [", a.start_step(), ", ", a.end_step(), ") do not end stage ", a.stage(),
        " (steps [", stage_start_[stage], ", ", stage_start_[stage + 1], "))"));
  }
  if (a.has_resume_from() ? a.resume_from().step() != a.start_step() : a.start_step() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("assignment: start_step ", a.start_step(), " but resume_from is ",
                     a.has_resume_from() ? absl::StrCat("step ", a.resume_from().step())
                                         : std::string("unset (a fresh start is at step 0)")));
  }
  return absl::OkStatus();
}

// Takes the run directory's lock, waiting up to lock_wait for a previous holder (a child of an
// earlier round that is still exiting) to let go.
absl::StatusOr<RunDirLock> StageChild::LockRunDirectory() {
  const std::string& dir = assignment_.run_directory();
  const absl::Time deadline = absl::Now() + options_.lock_wait;
  absl::Time next_log = absl::Now();
  while (true) {
    absl::StatusOr<RunDirLock> lock = RunDirLock::Acquire(dir);
    if (lock.ok() || !absl::IsFailedPrecondition(lock.status())) return lock;
    const std::optional<int64_t> holder = RunDirLock::HolderPid(dir);
    const std::string who = holder ? absl::StrCat("process ", *holder) : "another process";
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("run directory ", dir, " is still held by ", who, " after ",
                       absl::FormatDuration(options_.lock_wait), ": ", lock.status().message()));
    }
    if (absl::Now() >= next_log) {
      QTRAIN_LOG(INFO) << "stage child: waiting for the run directory " << dir << ", held by "
                       << who;
      next_log = absl::Now() + absl::Seconds(5);
    }
    if (stopping()) return absl::CancelledError("stopped while waiting for the run directory");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// The checkpoint to resume from must hold the files the coordinator committed.
absl::Status StageChild::VerifyResumeCheckpoint() const {
  if (!assignment_.has_resume_from()) return absl::OkStatus();
  const v1::Checkpoint& committed = assignment_.resume_from();
  const std::string dir = CheckpointDirectory();
  if (!committed.directory().empty() && !SameDirectory(committed.directory(), dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat("assignment: resume_from.directory ", committed.directory(),
                     " is not the checkpoint of step ", committed.step(), " (", dir, ")"));
  }
  if (committed.files().empty()) {
    return absl::InvalidArgumentError("assignment: resume_from lists no files");
  }
  for (const v1::CheckpointFile& file : committed.files()) {
    if (file.path().empty() || file.path().find('/') != std::string::npos || file.path() == "." ||
        file.path() == "..") {
      return absl::InvalidArgumentError(absl::StrCat("assignment: resume_from lists the file '",
                                                     file.path(),
                                                     "', not a file name inside the checkpoint"));
    }
    const std::string path = dir + "/" + file.path();
    absl::StatusOr<std::string> sha = Sha256File(path);
    if (!sha.ok()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint ", dir, ": ", file.path(),
                       " of the committed checkpoint cannot be read: ", sha.status().message()));
    }
    if (*sha != file.sha256()) {
      return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": ", file.path(), " has sha256 ",
                                              *sha, ", the committed checkpoint ", file.sha256()));
    }
  }
  return absl::OkStatus();
}

void StageChild::OnStep(const train::StepReport& r) {
  v1::StageChildEvent event;
  v1::WorkerProgress* p = event.mutable_progress();
  p->set_job(assignment_.job());
  p->set_round(assignment_.round());
  p->set_rank(assignment_.rank());
  p->set_stage(r.stage);
  p->set_step(r.step);
  p->set_loss(r.loss);
  p->set_learning_rate(r.learning_rate);
  p->set_grad_norm(r.grad_norm);
  p->set_tokens_per_second(r.tokens_per_second);
  p->set_tokens_seen(r.tokens_seen);
  p->set_skipped_steps(r.skipped_total);
  if (r.eval_loss) p->set_eval_loss(*r.eval_loss);
  p->set_total_steps(r.total_steps);
  p->set_eta_seconds(r.eta_seconds);
  p->set_step_seconds(r.step_seconds);
  p->set_data_wait_seconds(r.data_seconds);
  p->set_comm_seconds(r.comm_seconds);
  const v1::JobSpec& spec = assignment_.spec();
  p->set_rank_tokens(spec.batch().global_tokens() / assignment_.world_size());
  if (r.stage >= 0 && r.stage < spec.curriculum_size()) {
    p->set_flops_per_token(model::FlopsPerToken(model_config_, spec.curriculum(r.stage).seq_len()));
  }
  p->set_memory_bytes(ResidentBytes());
  last_progress_ = *p;
  (void)Emit(event);
  // Test hook: lets a test act while the stage is under way. Cut short by a stop.
  for (int64_t slept = 0; slept < step_delay_ms_ && !stopping(); slept += 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(10, step_delay_ms_)));
  }
}

// The eval tasks of a stage's end ran (rank 0, after the stage's last step): the last step's
// progress again, with their results.
void StageChild::OnEvalTasks(const std::vector<v1::EvalTaskResult>& results) {
  v1::StageChildEvent event;
  v1::WorkerProgress* p = event.mutable_progress();
  *p = last_progress_;
  p->set_memory_bytes(ResidentBytes());
  for (const v1::EvalTaskResult& result : results) *p->add_eval_tasks() = result;
  (void)Emit(event);
}

// Adds the checkpoint's manifest to the files of `request`.
absl::Status AddManifest(const std::string& directory, v1::CommitCheckpointRequest* request) {
  const std::string manifest = directory + "/" + train::CheckpointStore::kManifestName;
  QTRAIN_ASSIGN_OR_RETURN(const std::string manifest_sha, Sha256File(manifest));
  std::error_code ec;
  const uintmax_t manifest_size = fs::file_size(manifest, ec);
  if (ec) return absl::InternalError(absl::StrCat(manifest, ": ", ec.message()));
  v1::CheckpointFile* file = request->add_files();
  file->set_path(train::CheckpointStore::kManifestName);
  file->set_sha256(manifest_sha);
  file->set_size_bytes(static_cast<int64_t>(manifest_size));
  file->set_rank(request->rank());
  return absl::OkStatus();
}

absl::Status StageChild::OnCheckpoint(const train::CheckpointInfo& info) {
  v1::StageChildEvent event;
  v1::CommitCheckpointRequest* request = event.mutable_checkpoint();
  request->set_job(assignment_.job());
  request->set_round(assignment_.round());
  request->set_rank(assignment_.rank());
  request->set_step(info.step);
  request->set_stage(assignment_.stage());
  if (const auto it = info.metadata.find("tokens_seen");
      it != info.metadata.end() && it->is_number_integer()) {
    request->set_tokens_seen(it->get<int64_t>());
  }
  if (const auto it = info.metadata.find("data_plan_sha256");
      it != info.metadata.end() && it->is_string()) {
    request->set_data_plan_sha256(it->get<std::string>());
  }
  request->set_directory(info.directory);
  request->set_write_seconds(info.write_seconds);
  for (const train::CheckpointFileEntry& entry : info.files) {
    v1::CheckpointFile* file = request->add_files();
    file->set_path(entry.path);
    file->set_sha256(entry.sha256);
    file->set_size_bytes(static_cast<int64_t>(entry.size));
    file->set_rank(assignment_.rank());
  }
  // Each rank reports the files it wrote; the manifest is rank 0's (it holds the trainer state
  // the files are resumed with).
  if (assignment_.rank() == 0) QTRAIN_RETURN_IF_ERROR(AddManifest(info.directory, request));
  parent_.ExpectAck();
  QTRAIN_RETURN_IF_ERROR(Emit(event));
  QTRAIN_ASSIGN_OR_RETURN(const v1::CheckpointAck ack,
                          parent_.WaitForAck([] { return g_stop_signal.load(); }));
  if (!ack.ok()) {
    return absl::AbortedError(
        absl::StrCat("checkpoint of step ", info.step, " was not committed: ", ack.message()));
  }
  QTRAIN_LOG(INFO) << "stage child: checkpoint of step " << info.step << " committed";
  return absl::OkStatus();
}

absl::Status StageChild::Train(train::PreparedJob& job, std::shared_ptr<const RunDirLock> lock) {
  const v1::Assignment& a = assignment_;
  model_config_ = job.config;
  train::TrainerOptions options;
  options.run_dir = a.run_directory();
  options.run_dir_lock = std::move(lock);
  options.resume_from_step = a.has_resume_from() ? a.resume_from().step() : -1;
  options.stop_after_step = a.end_step();
  options.rank = static_cast<int>(a.rank());
  options.world_size = static_cast<int>(a.world_size());
  options.communicator = group_.get();  // null at world_size 1: the trainer's group of one
  options.apply_retention = false;      // the coordinator's: it knows which ones are committed
  options.cancelled = [this] { return stopping(); };
  options.on_event = [](const std::string& text) { QTRAIN_LOG(INFO) << "stage child: " << text; };
  options.on_step = [this](const train::StepReport& r) { OnStep(r); };
  options.on_eval_tasks = [this](const std::vector<v1::EvalTaskResult>& results) {
    OnEvalTasks(results);
  };
  options.tokenizer = job.tokenizer.get();
  options.on_phase = [this](train::TrainerPhase phase) { (void)EmitPhase(ToWorkerPhase(phase)); };
  options.on_checkpoint = [this](const train::CheckpointInfo& info) { return OnCheckpoint(info); };
  // world.device cuda: the first GPU this process sees (one worker per GPU). A GPU that cannot
  // be used may be busy or recovering: retryable.
  absl::StatusOr<std::unique_ptr<kernels::Backend>> backend =
      options_.create_backend ? options_.create_backend(a.spec().world().device())
                              : train::CreateTrainingBackend(a.spec().world().device());
  if (!backend.ok()) {
    retryable_ = absl::IsUnavailable(backend.status());
    return backend.status();
  }
  options.backend = backend->get();
  if (*backend != nullptr) {
    QTRAIN_LOG(INFO) << "stage child: training on the " << (*backend)->name() << " backend";
    if (a.world_size() > 1) {
      QTRAIN_RETURN_IF_ERROR(JoinDeviceGroup());
      absl::MutexLock lock(&watch_mu_);
      options.device_communicator = device_group_.get();
    }
  }
  absl::StatusOr<std::unique_ptr<train::Trainer>> trainer = train::Trainer::Create(
      a.spec(), job.config, std::move(job.initial_params), *job.data, std::move(options));
  if (!trainer.ok()) {
    // The spec, the model or the data do not fit: the same every time (unless memory ran out).
    retryable_ = absl::IsResourceExhausted(trainer.status());
    return trainer.status();
  }
  QTRAIN_RETURN_IF_ERROR(EmitPhase(v1::WORKER_PHASE_TRAINING));
  absl::StatusOr<train::TrainerSummary> summary = (*trainer)->Run();
  QTRAIN_RETURN_IF_ERROR(emit_error_);
  if (!summary.ok()) return summary.status();
  if (summary->steps != a.end_step()) {
    return absl::InternalError(absl::StrCat("training stopped at step ", summary->steps,
                                            ", not at the stage's end ", a.end_step()));
  }
  v1::StageChildEvent done;
  done.mutable_done()->set_stage(a.stage());
  done.mutable_done()->set_step(summary->steps);
  if (summary->completed) {
    // Like `qtrain train`: the tokenizer beside the exported model.
    QTRAIN_RETURN_IF_ERROR(train::WriteTokenizerFiles(job.tokenizer_files, summary->final_dir));
    done.mutable_done()->set_final_directory(summary->final_dir);
  }
  return Emit(done);
}

absl::Status StageChild::Run() {
  QTRAIN_RETURN_IF_ERROR(EmitPhase(v1::WORKER_PHASE_LOADING));
  // Bad input: retrying the same assignment gives the same answer.
  retryable_ = false;
  QTRAIN_RETURN_IF_ERROR(CheckAssignment());
  if (options_.threads > 0) omp_set_num_threads(options_.threads);
  QTRAIN_LOG(INFO) << "stage child: " << assignment_.job() << " round " << assignment_.round()
                   << " rank " << assignment_.rank() << "/" << assignment_.world_size()
                   << ": stage " << assignment_.stage() << ", steps " << assignment_.start_step()
                   << "-" << assignment_.end_step() << " in " << assignment_.run_directory();
  absl::StatusOr<train::PreparedJob> job =
      train::PrepareJob(assignment_.spec(), assignment_.has_data() ? &assignment_.data() : nullptr);
  if (!job.ok()) {
    // Missing, changed or damaged data, tokenizer or model files; a failed read (I/O, memory)
    // may pass.
    const absl::StatusCode code = job.status().code();
    retryable_ =
        code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kNotFound &&
        code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kDataLoss &&
        code != absl::StatusCode::kUnimplemented && code != absl::StatusCode::kOutOfRange;
    return job.status();
  }
  retryable_ = true;
  const absl::Status trained = [&]() -> absl::Status {
    if (stopping()) return absl::CancelledError("stopped before training");
    // Rank 0 alone owns the run directory; the other ranks write only their optimizer shards.
    std::shared_ptr<const RunDirLock> lock;
    if (assignment_.rank() == 0) {
      QTRAIN_ASSIGN_OR_RETURN(RunDirLock held, LockRunDirectory());
      lock = std::make_shared<const RunDirLock>(std::move(held));
    }
    QTRAIN_RETURN_IF_ERROR(VerifyResumeCheckpoint());
    if (assignment_.world_size() > 1) QTRAIN_RETURN_IF_ERROR(JoinGroup());
    return Train(*job, std::move(lock));
  }();
  StopWatching();
  if (IsGroupFailure(trained)) {
    // A peer died, hung or was cut off (or this rank was stopped): a new group may do better.
    retryable_ = true;
    return trained;
  }
  const absl::StatusCode code = trained.code();
  // Deterministic failures: another try would fail the same way.
  if (code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented ||
      code == absl::StatusCode::kFailedPrecondition) {
    retryable_ = false;
  }
  return trained;
}

void WriteError(EventWriter& events, const absl::Status& status, bool retryable) {
  v1::StageChildEvent event;
  v1::StageError* error = event.mutable_error();
  error->set_code(absl::StatusCodeToString(status.code()));
  error->set_message(std::string(status.message()));
  error->set_retryable(retryable);
  (void)events.Write(event);
}

// The flags of a rank's group (their use needs world_size > 1, their form is checked always).
absl::Status CheckGroupFlags(const StageChildOptions& options) {
  if (!options.worker.empty()) {
    const absl::string_view id = absl::StripPrefix(options.worker, "workers/");
    if (!absl::StartsWith(options.worker, "workers/") || !IsValidWorkerId(id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--worker: '", options.worker, "' is not a worker name (workers/ID)"));
    }
  }
  if (std::optional<std::string> problem = PeerHostProblem(options.peer_host)) {
    return absl::InvalidArgumentError(absl::StrCat("--peer-host: ", *problem));
  }
  if (std::optional<std::string> problem = CollectiveTimeoutProblem(options.collective_timeout)) {
    return absl::InvalidArgumentError(absl::StrCat("--collective-timeout-ms: ", *problem));
  }
  return absl::OkStatus();
}

}  // namespace

int RunStageChild(const StageChildOptions& options) {
  ScopedStopSignals signals;
  EventWriter events(options.events_fd);
  if (absl::Status flags = CheckGroupFlags(options); !flags.ok()) {
    QTRAIN_LOG(ERROR) << "stage child: " << flags;
    WriteError(events, flags, /*retryable=*/false);
    return kStageChildUsage;
  }
  absl::StatusOr<v1::Assignment> assignment = ReadAssignment(options.assignment_path);
  if (!assignment.ok()) {
    QTRAIN_LOG(ERROR) << "stage child: " << assignment.status();
    WriteError(events, assignment.status(), /*retryable=*/false);
    return kStageChildUsage;
  }
  // The coordinator sends the spec with its defaults applied; applying them again changes
  // nothing, and makes a hand-written assignment mean what `qtrain train` would.
  ApplyJobSpecDefaults(assignment->mutable_spec());
  ParentLink parent(options.control_fd, options.parent_timeout);
  parent.Start();
  StageChild child(options, *std::move(assignment), events, parent);
  const absl::Status status = child.Run();
  parent.Stop();
  if (status.ok()) return kStageChildOk;
  if (parent.orphaned()) {
    WriteError(events, absl::UnavailableError(parent.orphan_reason()), /*retryable=*/true);
    return kStageChildOrphaned;
  }
  if (g_stop_signal) {
    QTRAIN_LOG(INFO) << "stage child: stopped by a signal (" << status.message() << ")";
    WriteError(events, absl::CancelledError(status.message()), /*retryable=*/true);
    return kStageChildCancelled;
  }
  QTRAIN_LOG(ERROR) << "stage child: " << status;
  WriteError(events, status, child.retryable());
  return kStageChildFailed;
}

}  // namespace qtrain::worker
