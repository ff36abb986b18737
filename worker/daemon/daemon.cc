#include "worker/daemon/daemon.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/daemon/coordinator_link.h"
#include "worker/daemon/machine_info.h"
#include "worker/daemon/peer_host.h"
#include "worker/daemon/stage_runner.h"
#include "worker/daemon/work_dir.h"
#include "worker/daemon/worker_metrics.h"
#include "worker/train/training_backend.h"

namespace qtrain::worker {
namespace {

// How often the loop looks at a child whose output ended but which is not reaped yet.
constexpr absl::Duration kReapPoll = absl::Milliseconds(10);

// The same assignment sent again (the coordinator repeats a directive it is not sure arrived).
bool SameAssignment(const v1::Assignment& a, const v1::Assignment& b) {
  return a.job() == b.job() && a.round() == b.round() && a.rank() == b.rank() &&
         a.stage() == b.stage() && a.start_step() == b.start_step();
}

// "jobs/x round 3 rank 0".
std::string Describe(const v1::Assignment& a) {
  return absl::StrCat(a.job(), " round ", a.round(), " rank ", a.rank());
}

// The coordinator's answer for a round that is no longer the job's current one.
bool IsStaleRound(const absl::Status& status) {
  return absl::IsFailedPrecondition(status) &&
         (absl::StrContains(status.message(), "is over") ||
          absl::StrContains(status.message(), "current round"));
}

// What makes an assignment impossible to run, if anything (the coordinator's fields).
std::optional<std::string> AssignmentProblem(const v1::Assignment& a) {
  const absl::string_view id = absl::StripPrefix(a.job(), "jobs/");
  if (!absl::StartsWith(a.job(), "jobs/") || id.empty() || absl::StrContains(id, "/")) {
    return absl::StrCat("job: '", a.job(), "' is not a job name (jobs/ID)");
  }
  if (a.world_size() < 1) return absl::StrCat("world_size: ", a.world_size(), " is not >= 1");
  if (a.rank() < 0 || a.rank() >= a.world_size()) {
    return absl::StrCat("rank: ", a.rank(), " is not in [0, ", a.world_size(), ")");
  }
  if (a.round() < 1) return absl::StrCat("round: ", a.round(), " is not >= 1");
  if (a.start_step() < 0 || a.end_step() <= a.start_step()) {
    return absl::StrCat("steps: [", a.start_step(), ", ", a.end_step(), ") is empty");
  }
  return std::nullopt;
}

v1::WorkerProgress BaseProgress(const v1::Assignment& a) {
  v1::WorkerProgress p;
  p.set_job(a.job());
  p.set_round(a.round());
  p.set_rank(a.rank());
  p.set_stage(a.stage());
  p.set_step(a.start_step());
  return p;
}

}  // namespace

class WorkerDaemon::Impl {
 public:
  Impl(DaemonOptions options, WorkDir work_dir, RpcClient client)
      : options_(std::move(options)), work_dir_(std::move(work_dir)) {
    const MachineInfo machine = DescribeMachine();
    LinkOptions link;
    v1::RegisterWorkerRequest& r = link.registration;
    r.set_hostname(options_.name.empty() ? machine.hostname : options_.name);
    r.set_device(options_.device);
    r.set_device_count(1);
    // A CUDA worker trains on its first visible GPU (one worker per GPU): its name picks the
    // peak FLOP/s of the utilization metric.
    if (const std::optional<train::TrainingDeviceInfo> gpu =
            train::DescribeTrainingDevice(options_.device)) {
      r.add_device_names(gpu->name);
      r.set_device_memory_bytes(gpu->memory_bytes);
    } else {
      if (!machine.cpu_model.empty()) r.add_device_names(machine.cpu_model);
      r.set_device_memory_bytes(machine.memory_bytes);
    }
    r.set_version(options_.version);
    peer_host_ = options_.peer_host.empty() ? machine.hostname : options_.peer_host;
    r.set_peer_host(peer_host_);
    (*r.mutable_labels())["hostname"] = machine.hostname;
    link.rpc_timeout = options_.rpc_timeout;
    link.reconnect_initial = options_.reconnect_initial;
    link.reconnect_max = options_.reconnect_max;
    link.on_directive = [this](const v1::Directive& d) { Post([this, d] { HandleDirective(d); }); };
    link.on_connected = [this] { Post([this] { heartbeat_now_ = true; }); };
    if (options_.metrics != nullptr) {
      metrics_ = std::make_unique<WorkerMetrics>(
          options_.metrics,
          options_.peak_flops
              ? options_.peak_flops
              : KnownPeakFlops(options_.device,
                               r.device_names_size() > 0 ? r.device_names(0) : std::string()));
      link.on_stream_up = [this](bool up) { metrics_->SetUp(up); };
    }
    link_ = std::make_unique<CoordinatorLink>(std::move(client), &work_dir_, std::move(link));
  }

  ~Impl() {
    Stop();
    (void)Wait();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  absl::Status Start() {
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return absl::InternalError("eventfd failed");
    rpc_thread_ = std::thread([this] { RpcLoop(); });
    // The control thread spawns the children: it lives as long as they may (PDEATHSIG).
    control_thread_ = std::thread([this] { ControlLoop(); });
    link_->Start();
    return absl::OkStatus();
  }

  void Drain(bool exit_when_drained) {
    Post([this, exit_when_drained] { BeginDrain(exit_when_drained, "requested"); });
  }

  void Stop() {
    hard_stop_ = true;
    Post([this] {
      if (runner_ != nullptr && !run_.stopped_by_us) {
        QTRAIN_LOG(INFO) << "stopping: aborting the training child of "
                         << Describe(runner_->assignment());
        StopChild();
      }
    });
  }

  absl::Status Wait() {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&done_));
    }
    absl::MutexLock lock(&join_mu_);
    if (control_thread_.joinable()) control_thread_.join();
    return absl::OkStatus();
  }

  bool done() const {
    absl::MutexLock lock(&mu_);
    return done_;
  }

  std::string worker_name() const { return link_->worker_name(); }

 private:
  // ---- Threads and queues ----

  // Runs `fn` on the control thread.
  void Post(std::function<void()> fn) {
    {
      absl::MutexLock lock(&mu_);
      posted_.push_back(std::move(fn));
    }
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }

  // Runs `fn` on the RPC thread, in order (calls may be retried for long).
  void PostRpc(std::function<void()> fn) {
    ++pending_rpcs_;
    absl::MutexLock lock(&mu_);
    rpc_queue_.push_back(std::move(fn));
  }

  void RpcLoop() {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return rpc_stop_ || !rpc_queue_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (rpc_stop_) return;
        fn = std::move(rpc_queue_.front());
        rpc_queue_.pop_front();
      }
      fn();
    }
  }

  void RunPosted() {
    std::deque<std::function<void()>> batch;
    {
      absl::MutexLock lock(&mu_);
      batch.swap(posted_);
    }
    for (auto& fn : batch) fn();
  }

  // Keeps retrying calls of `generation` while it is the live one.
  std::function<bool()> KeepTrying(uint64_t generation) {
    return [this, generation] { return !hard_stop_ && live_generation_ == generation; };
  }

  void ControlLoop() {
    next_heartbeat_ = absl::Now();
    while (true) {
      RunPosted();
      const absl::Time now = absl::Now();
      if (runner_ != nullptr) ServeChild(now);
      CheckDrain(now);
      if (heartbeat_now_ || now >= next_heartbeat_) SendHeartbeat();
      if (ShouldExit()) break;
      WaitForWork();
    }
    const std::string name = link_->worker_name();
    QTRAIN_LOG(INFO) << "worker " << (name.empty() ? "(not registered)" : name) << " exits";
    link_->Stop();
    if (metrics_ != nullptr) metrics_->SetUp(false);
    {
      absl::MutexLock lock(&mu_);
      rpc_stop_ = true;
    }
    rpc_thread_.join();
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

  bool ShouldExit() {
    if (runner_ != nullptr || pending_assignment_) return false;
    if (hard_stop_) return true;
    if (!exit_when_drained_) return false;
    // Reports of the last assignment go out first (for at most one call's deadline once the
    // drain is over).
    if (pending_rpcs_ == 0) return true;
    const absl::Time now = absl::Now();
    if (!exit_deadline_) exit_deadline_ = std::max(now, drain_deadline_) + options_.rpc_timeout;
    return now >= *exit_deadline_;
  }

  void WaitForWork() {
    absl::Time wake = next_heartbeat_;
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {-1, POLLIN, 0}};
    int nfds = 1;
    if (runner_ != nullptr) {
      wake = std::min(wake, runner_->next_tick());
      if (runner_->stdout_fd() >= 0) {
        fds[1].fd = runner_->stdout_fd();
        nfds = 2;
      } else {
        wake = std::min(wake, absl::Now() + kReapPoll);
      }
    }
    if (draining_) wake = std::min(wake, drain_deadline_);
    const int64_t ms =
        std::clamp<int64_t>(absl::ToInt64Milliseconds(wake - absl::Now()) + 1, 0, 1000);
    ::poll(fds, nfds, static_cast<int>(ms));
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(wake_fd_, &count, sizeof(count));
  }

  // ---- Heartbeats ----

  void SendHeartbeat() {
    v1::HeartbeatRequest request;
    request.set_phase(phase_);
    if (progress_) *request.mutable_progress() = *progress_;
    request.set_draining(draining_);
    const bool sent = link_->SendHeartbeat(std::move(request));
    heartbeat_now_ = false;
    next_heartbeat_ = absl::Now() + link_->heartbeat_interval();
    // STOPPED (with the round) is said once; then the worker is plainly idle.
    if (sent && phase_ == v1::WORKER_PHASE_STOPPED && runner_ == nullptr) {
      phase_ = v1::WORKER_PHASE_IDLE;
      progress_.reset();
      heartbeat_now_ = true;
    }
  }

  // ---- Directives ----

  void HandleDirective(const v1::Directive& d) {
    switch (d.kind_case()) {
      case v1::Directive::kAssign:
        HandleAssign(d.assign());
        break;
      case v1::Directive::kAbort:
        HandleAbort(d.abort());
        break;
      case v1::Directive::kDrain:
        BeginDrain(/*exit_when_drained=*/false,
                   absl::StrCat("the coordinator asked: ", d.drain().reason()));
        break;
      default:
        break;
    }
  }

  void HandleAssign(const v1::Assignment& a) {
    if (runner_ != nullptr && SameAssignment(runner_->assignment(), a)) return;
    if (pending_assignment_ && SameAssignment(*pending_assignment_, a)) return;
    if (draining_ || hard_stop_) {
      QTRAIN_LOG(WARNING) << "refusing the assignment of " << Describe(a)
                          << ": the worker is draining";
      ReportFailure(a, "UNAVAILABLE", absl::StrCat(link_->worker_name(), " is draining"),
                    /*retryable=*/true, /*drained=*/true, live_generation_);
      return;
    }
    if (runner_ != nullptr) {
      // One child at a time: the new one starts once the old one is gone. A child that said
      // it is done exits by itself.
      if (!run_.stopped_by_us && !run_.done_seen) {
        QTRAIN_LOG(INFO) << "assignment of " << Describe(a) << " while running "
                         << Describe(runner_->assignment()) << ": stopping that one first";
        StopChild();
      }
      pending_assignment_ = a;
      return;
    }
    StartAssignment(a);
  }

  void HandleAbort(const v1::Abort& abort) {
    const auto matches = [&](const v1::Assignment& a) {
      return a.job() == abort.job() && (abort.round() == 0 || a.round() == abort.round());
    };
    if (pending_assignment_ && matches(*pending_assignment_)) pending_assignment_.reset();
    if (runner_ != nullptr && matches(runner_->assignment())) {
      if (!run_.stopped_by_us) {
        QTRAIN_LOG(INFO) << "abort of " << Describe(runner_->assignment()) << ": "
                         << abort.reason();
        StopChild();
      }
      return;
    }
    QTRAIN_LOG(DEBUG) << "abort of " << abort.job() << " round " << abort.round()
                      << ": not running it";
    heartbeat_now_ = true;
  }

  // ---- The child ----

  absl::Duration ParentTimeout() const {
    // The child stops itself when the daemon is silent this long; several pings must fit.
    return std::max(std::min(link_->lease() / 2, absl::Seconds(5)), options_.ping_interval * 3);
  }

  void StartAssignment(const v1::Assignment& a) {
    run_ = RunState{.generation = ++live_generation_};
    progress_ = BaseProgress(a);
    heartbeat_now_ = true;
    if (std::optional<std::string> problem = AssignmentProblem(a)) {
      QTRAIN_LOG(ERROR) << "refusing the assignment of " << Describe(a) << ": " << *problem;
      phase_ = v1::WORKER_PHASE_STOPPED;
      ReportFailure(a, "INVALID_ARGUMENT", absl::StrCat("invalid assignment: ", *problem),
                    /*retryable=*/false, /*drained=*/false, run_.generation);
      return;
    }
    StageRunnerOptions runner_options{.command = options_.child_command,
                                      .threads = options_.threads,
                                      .parent_timeout = ParentTimeout(),
                                      .ping_interval = options_.ping_interval,
                                      .coordinator = options_.channel,
                                      .worker = link_->worker_name(),
                                      .peer_host = peer_host_,
                                      .collective_timeout = options_.collective_timeout};
    absl::StatusOr<std::unique_ptr<StageRunner>> runner =
        StageRunner::Start(a, work_dir_.AssignmentPath(AssignmentFileName(a)), runner_options);
    if (!runner.ok()) {
      QTRAIN_LOG(ERROR) << "cannot start the training child for " << Describe(a) << ": "
                        << runner.status().message();
      phase_ = v1::WORKER_PHASE_STOPPED;
      ReportFailure(a, "INTERNAL",
                    absl::StrCat("cannot start the training child: ", runner.status().message()),
                    /*retryable=*/true, /*drained=*/false, run_.generation);
      return;
    }
    runner_ = std::move(*runner);
    phase_ = v1::WORKER_PHASE_LOADING;
    QTRAIN_LOG(INFO) << "assignment: " << Describe(a) << ", stage " << a.stage() << ", steps ["
                     << a.start_step() << ", " << a.end_step() << ")"
                     << (a.has_resume_from() ? absl::StrCat(" from ", a.resume_from().name())
                                             : std::string(" from the initialization"))
                     << " (child pid " << runner_->pid() << ")";
  }

  // SIGTERM now, SIGKILL after the grace; calls of this round are no longer retried.
  void StopChild() {
    run_.stopped_by_us = true;
    ++live_generation_;
    runner_->Stop(options_.kill_grace);
    // The phase stays until the child is gone: STOPPED means its run directory is free.
  }

  void ServeChild(absl::Time now) {
    absl::StatusOr<std::vector<v1::StageChildEvent>> events = runner_->ReadEvents();
    if (!events.ok()) {
      if (!run_.stopped_by_us) {
        QTRAIN_LOG(ERROR) << "reading the training child of " << Describe(runner_->assignment())
                          << ": " << events.status().message();
        run_.error_seen = true;
        ReportFailure(runner_->assignment(), "INTERNAL", std::string(events.status().message()),
                      /*retryable=*/true, /*drained=*/false, run_.generation);
        StopChild();
      }
    } else {
      for (const v1::StageChildEvent& event : *events) HandleEvent(event);
    }
    runner_->Tick(now);
    if (std::optional<ExitStatus> exit = runner_->TryWait()) OnChildExit(*exit);
  }

  void HandleEvent(const v1::StageChildEvent& event) {
    if (run_.stopped_by_us) return;  // what it says on its way out no longer matters
    const v1::Assignment& a = runner_->assignment();
    switch (event.event_case()) {
      case v1::StageChildEvent::kPhase:
        phase_ = event.phase();
        heartbeat_now_ = true;
        break;
      case v1::StageChildEvent::kProgress: {
        v1::WorkerProgress p = event.progress();
        p.set_job(a.job());
        p.set_round(a.round());
        p.set_rank(a.rank());
        if (metrics_ != nullptr) metrics_->OnProgress(a, p);
        progress_ = std::move(p);
        SendHeartbeat();  // one per step, as it happens
        break;
      }
      case v1::StageChildEvent::kCheckpoint:
        if (metrics_ != nullptr) metrics_->OnCheckpoint(a, event.checkpoint().write_seconds());
        CommitCheckpoint(event.checkpoint());
        break;
      case v1::StageChildEvent::kDone:
        CompleteAssignment(event.done());
        break;
      case v1::StageChildEvent::kError: {
        const v1::StageError& e = event.error();
        run_.error_seen = true;
        QTRAIN_LOG(WARNING) << "training child of " << Describe(a) << " failed: " << e.code()
                            << ": " << e.message();
        ReportFailure(a, e.code().empty() ? "INTERNAL" : e.code(), e.message(), e.retryable(),
                      /*drained=*/false, run_.generation);
        break;
      }
      default:
        break;
    }
  }

  void OnChildExit(const ExitStatus& exit) {
    const v1::Assignment a = runner_->assignment();
    const pid_t pid = runner_->pid();
    runner_.reset();
    if (metrics_ != nullptr) {
      metrics_->OnAssignmentEnded(run_.done_seen && exit.success());
    }
    heartbeat_now_ = true;
    if (run_.stopped_by_us) {
      QTRAIN_LOG(INFO) << "training child of " << Describe(a) << " stopped (" << exit.Describe()
                       << ")";
      phase_ = v1::WORKER_PHASE_STOPPED;
      if (run_.drain_report) {
        ReportFailure(a, "UNAVAILABLE", *run_.drain_report, /*retryable=*/true,
                      run_.drained_after_checkpoint, live_generation_);
      }
    } else if (run_.done_seen) {
      if (!exit.success()) {
        QTRAIN_LOG(WARNING) << "training child of " << Describe(a) << " " << exit.Describe()
                            << " after finishing its stage";
      }
      if (!run_.completing) {
        phase_ = v1::WORKER_PHASE_IDLE;
        progress_.reset();
      }
    } else if (run_.error_seen) {
      phase_ = v1::WORKER_PHASE_STOPPED;
    } else {
      const std::string why = absl::StrCat("the training child (pid ", pid, ") ", exit.Describe(),
                                           " without reporting an error");
      QTRAIN_LOG(WARNING) << Describe(a) << ": " << why;
      phase_ = v1::WORKER_PHASE_STOPPED;
      ReportFailure(a, "INTERNAL", why, /*retryable=*/true, /*drained=*/false, run_.generation);
    }
    if (pending_assignment_ && (hard_stop_ || draining_)) pending_assignment_.reset();
    if (pending_assignment_) {
      v1::Assignment next = std::move(*pending_assignment_);
      pending_assignment_.reset();
      StartAssignment(next);
    }
  }

  // ---- Calls for the child ----

  void CommitCheckpoint(v1::CommitCheckpointRequest request) {
    const v1::Assignment& a = runner_->assignment();
    request.set_worker(link_->worker_name());
    request.set_job(a.job());
    request.set_round(a.round());
    request.set_rank(a.rank());
    const uint64_t generation = run_.generation;
    PostRpc([this, request, generation] {
      v1::CommitCheckpointResponse response;
      const absl::Status status = link_->Call(
          "CommitCheckpoint",
          [&](v1::WorkerService::Stub& stub, grpc::ClientContext* context) {
            return stub.CommitCheckpoint(context, request, &response);
          },
          KeepTrying(generation));
      Post([this, request, generation, status, response] {
        --pending_rpcs_;
        OnCommitted(request, generation, status, response);
      });
    });
  }

  void OnCommitted(const v1::CommitCheckpointRequest& request, uint64_t generation,
                   const absl::Status& status, const v1::CommitCheckpointResponse& response) {
    if (runner_ == nullptr || run_.generation != generation || run_.stopped_by_us) return;
    const v1::Assignment& a = runner_->assignment();
    if (status.ok()) {
      QTRAIN_LOG(INFO) << "checkpoint committed: " << a.job() << " step " << request.step() << " ("
                       << v1::CheckpointState_Name(response.checkpoint().state()) << ")";
      AckChild(true, "");
      if (draining_ && request.step() < a.end_step()) {
        QTRAIN_LOG(INFO) << "draining: stopping " << Describe(a) << " after the checkpoint of step "
                         << request.step();
        run_.drain_report = absl::StrCat(link_->worker_name(),
                                         " is draining: stopped after the committed checkpoint "
                                         "of step ",
                                         request.step());
        run_.drained_after_checkpoint = true;
        StopChild();
      }
      return;
    }
    if (IsStaleRound(status) || absl::IsAborted(status)) {
      QTRAIN_LOG(INFO) << "stopping " << Describe(a) << ": " << status.message();
      StopChild();
      return;
    }
    QTRAIN_LOG(WARNING) << "checkpoint of " << a.job() << " step " << request.step()
                        << " refused: " << status.message();
    AckChild(false, std::string(status.message()));
  }

  void AckChild(bool ok, const std::string& message) {
    if (absl::Status s = runner_->Ack(ok, message); !s.ok()) {
      QTRAIN_LOG(WARNING) << "cannot answer the training child: " << s.message();
    }
  }

  void CompleteAssignment(const v1::StageDone& done) {
    const v1::Assignment& a = runner_->assignment();
    run_.done_seen = true;
    run_.completing = true;
    v1::CompleteAssignmentRequest request;
    request.set_worker(link_->worker_name());
    request.set_job(a.job());
    request.set_round(a.round());
    request.set_rank(a.rank());
    request.set_stage(done.stage());
    request.set_step(done.step());
    request.set_final_directory(done.final_directory());
    const uint64_t generation = run_.generation;
    const v1::Assignment assignment = a;
    PostRpc([this, request, generation, assignment] {
      v1::CompleteAssignmentResponse response;
      const absl::Status status = link_->Call(
          "CompleteAssignment",
          [&](v1::WorkerService::Stub& stub, grpc::ClientContext* context) {
            return stub.CompleteAssignment(context, request, &response);
          },
          KeepTrying(generation));
      Post([this, request, generation, assignment, status] {
        --pending_rpcs_;
        OnCompleted(request, assignment, generation, status);
      });
    });
  }

  void OnCompleted(const v1::CompleteAssignmentRequest& request, const v1::Assignment& a,
                   uint64_t generation, const absl::Status& status) {
    if (status.ok()) {
      QTRAIN_LOG(INFO) << "stage done: " << Describe(a) << ", stage " << request.stage()
                       << " at step " << request.step()
                       << (request.final_directory().empty()
                               ? std::string()
                               : absl::StrCat(", model in ", request.final_directory()));
    } else if (IsStaleRound(status)) {
      QTRAIN_LOG(INFO) << "stage done, but " << status.message();
    } else if (live_generation_ == generation) {
      QTRAIN_LOG(WARNING) << "CompleteAssignment of " << Describe(a)
                          << " failed: " << status.message();
      ReportFailure(a, "INTERNAL", absl::StrCat("CompleteAssignment failed: ", status.message()),
                    /*retryable=*/true, /*drained=*/false, generation);
    }
    if (run_.generation != generation) return;
    run_.completing = false;
    if (runner_ == nullptr) {
      phase_ = v1::WORKER_PHASE_IDLE;
      progress_.reset();
      heartbeat_now_ = true;
    }
  }

  void ReportFailure(const v1::Assignment& a, const std::string& code, const std::string& message,
                     bool retryable, bool drained, uint64_t generation) {
    v1::ReportFailureRequest request;
    request.set_worker(link_->worker_name());
    request.set_job(a.job());
    request.set_round(a.round());
    request.set_rank(a.rank());
    request.set_code(code);
    request.set_message(message);
    request.set_retryable(retryable);
    request.set_drained(drained);
    PostRpc([this, request, generation] {
      v1::ReportFailureResponse response;
      const absl::Status status = link_->Call(
          "ReportFailure",
          [&](v1::WorkerService::Stub& stub, grpc::ClientContext* context) {
            return stub.ReportFailure(context, request, &response);
          },
          KeepTrying(generation));
      Post([this, request, status] {
        --pending_rpcs_;
        if (status.ok()) {
          QTRAIN_LOG(INFO) << "reported the failure of " << request.job() << " round "
                           << request.round() << ": " << request.code()
                           << (request.drained() ? " (drained)" : "");
        } else {
          QTRAIN_LOG(WARNING) << "ReportFailure of " << request.job() << " round "
                              << request.round() << " failed: " << status.message();
        }
      });
    });
  }

  // ---- Draining ----

  void BeginDrain(bool exit_when_drained, const std::string& why) {
    exit_when_drained_ = exit_when_drained_ || exit_when_drained;
    heartbeat_now_ = true;
    if (draining_) return;
    draining_ = true;
    drain_deadline_ = absl::Now() + options_.drain_timeout;
    QTRAIN_LOG(INFO) << "draining (" << why << ")"
                     << (runner_ != nullptr
                             ? absl::StrCat(": ", Describe(runner_->assignment()),
                                            " stops at its next checkpoint, within ",
                                            absl::FormatDuration(options_.drain_timeout))
                             : std::string(": idle"));
  }

  void CheckDrain(absl::Time now) {
    if (!draining_ || runner_ == nullptr || run_.stopped_by_us || now < drain_deadline_) return;
    const v1::Assignment& a = runner_->assignment();
    QTRAIN_LOG(WARNING) << "drain timeout: stopping " << Describe(a)
                        << " before its next checkpoint";
    run_.drain_report = absl::StrCat(
        link_->worker_name(), " is draining: stopped before its next checkpoint (drain timeout ",
        absl::FormatDuration(options_.drain_timeout), ")");
    run_.drained_after_checkpoint = false;
    StopChild();
  }

  // The state of the current assignment (control thread only).
  struct RunState {
    uint64_t generation = 0;
    bool stopped_by_us = false;  // aborted, superseded, drained or stale
    bool done_seen = false;
    bool completing = false;  // CompleteAssignment not answered yet
    bool error_seen = false;
    std::optional<std::string> drain_report;  // reported once the child is gone
    bool drained_after_checkpoint = false;
  };

  DaemonOptions options_;
  std::string peer_host_;  // options_.peer_host, or the hostname
  WorkDir work_dir_;
  std::unique_ptr<WorkerMetrics> metrics_;  // null without a registry; outlives link_
  std::unique_ptr<CoordinatorLink> link_;
  int wake_fd_ = -1;
  std::thread control_thread_;
  std::thread rpc_thread_;
  absl::Mutex join_mu_;

  // Control thread only.
  std::unique_ptr<StageRunner> runner_;
  RunState run_;
  std::optional<v1::Assignment> pending_assignment_;
  v1::WorkerPhase phase_ = v1::WORKER_PHASE_IDLE;
  std::optional<v1::WorkerProgress> progress_;
  bool heartbeat_now_ = true;
  absl::Time next_heartbeat_;
  int pending_rpcs_ = 0;
  bool draining_ = false;
  bool exit_when_drained_ = false;
  absl::Time drain_deadline_ = absl::InfiniteFuture();
  std::optional<absl::Time> exit_deadline_;

  // Read by the RPC thread's retry loops.
  std::atomic<uint64_t> live_generation_{0};
  std::atomic<bool> hard_stop_{false};

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> rpc_queue_ ABSL_GUARDED_BY(mu_);
  bool rpc_stop_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

absl::StatusOr<std::unique_ptr<WorkerDaemon>> WorkerDaemon::Start(const DaemonOptions& options) {
  QTRAIN_RETURN_IF_ERROR(CheckDevice(options.device));
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads: must be 0 or more, not ", options.threads));
  }
  if (options.drain_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--drain-timeout-seconds: must not be negative");
  }
  if (!options.peer_host.empty()) {
    if (std::optional<std::string> problem = PeerHostProblem(options.peer_host)) {
      return absl::InvalidArgumentError(absl::StrCat("--peer-host: ", *problem));
    }
  }
  if (std::optional<std::string> problem = CollectiveTimeoutProblem(options.collective_timeout)) {
    return absl::InvalidArgumentError(absl::StrCat("--collective-timeout-seconds: ", *problem));
  }
  if (options.peak_flops) {
    if (std::optional<std::string> problem = PeakFlopsProblem(*options.peak_flops)) {
      return absl::InvalidArgumentError(absl::StrCat("--peak-flops: ", *problem));
    }
  }
  if (options.child_command.empty()) {
    return absl::InvalidArgumentError("no training child command");
  }
  QTRAIN_ASSIGN_OR_RETURN(WorkDir work_dir, WorkDir::Open(options.work_dir));
  // An unreadable worker_id is an error now, not a registration that fails forever.
  QTRAIN_RETURN_IF_ERROR(work_dir.ReadWorkerId().status());
  QTRAIN_ASSIGN_OR_RETURN(RpcClient client, RpcClient::Create(options.channel));
  auto impl = std::make_unique<Impl>(options, std::move(work_dir), std::move(client));
  QTRAIN_RETURN_IF_ERROR(impl->Start());
  QTRAIN_LOG(INFO) << "worker daemon started (work directory " << options.work_dir
                   << ", coordinator " << options.channel.address << ")";
  return std::unique_ptr<WorkerDaemon>(new WorkerDaemon(std::move(impl)));
}

WorkerDaemon::WorkerDaemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerDaemon::~WorkerDaemon() = default;

void WorkerDaemon::Drain(bool exit_when_drained) { impl_->Drain(exit_when_drained); }
void WorkerDaemon::Stop() { impl_->Stop(); }
absl::Status WorkerDaemon::Wait() { return impl_->Wait(); }
bool WorkerDaemon::done() const { return impl_->done(); }
std::string WorkerDaemon::worker_name() const { return impl_->worker_name(); }

}  // namespace qtrain::worker
