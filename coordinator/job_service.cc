#include "coordinator/job_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "coordinator/unary.h"
#include "qtrain/v1/jobs.grpc.pb.h"

namespace qtrain::coordinator {
namespace {

constexpr int kReadBatch = 256;

bool IsTerminalEvent(const v1::JobEvent& event) {
  if (!event.has_state_changed()) return false;
  const v1::JobState to = event.state_changed().to();
  return to == v1::JOB_STATE_SUCCEEDED || to == v1::JOB_STATE_FAILED ||
         to == v1::JOB_STATE_CANCELLED;
}

class WatchReactor;

// One thread reads events from the store for the watchers that have room for more, so that
// neither the coordinator nor gRPC's threads ever wait on a watcher.
class EventPump {
 public:
  EventPump() : thread_([this] { Run(); }) {}
  ~EventPump() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void Schedule(std::shared_ptr<WatchReactor> reactor) {
    absl::MutexLock lock(&mu_);
    if (!stop_) queue_.push_back(std::move(reactor));
  }

 private:
  void Run();
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::shared_ptr<WatchReactor>> queue_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent>,
                     public std::enable_shared_from_this<WatchReactor> {
 public:
  WatchReactor(Coordinator* coordinator, EventPump* pump, const v1::WatchJobRequest& request)
      : coordinator_(coordinator),
        pump_(pump),
        job_(request.name()),
        include_steps_(request.include_step_metrics()),
        last_read_(request.after_sequence()),
        scanned_(request.after_sequence()) {}

  // Keeps itself alive until gRPC is done with it.
  void Begin() {
    self_ = shared_from_this();
    pump_->Schedule(self_);
  }

  // On the pump thread: fetch more events, or wait for them, or end.
  void Step() {
    auto keep = shared_from_this();
    Action action;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || writing_) return;
      if (buffer_.empty()) {
        const int64_t after = last_read_;
        mu_.Unlock();
        absl::StatusOr<Coordinator::EventPage> page =
            coordinator_->ReadEvents(job_, after, kReadBatch, include_steps_);
        mu_.Lock();
        if (finished_ || writing_) return;
        if (!page.ok()) {
          action = FinishLocked(ToGrpcStatus(page.status()));
        } else {
          for (v1::JobEvent& e : page->events) buffer_.push_back(std::move(e));
          scanned_ = std::max(scanned_, page->scanned);
          last_read_ = scanned_;
          if (buffer_.empty()) {
            if (page->ended) {
              action = FinishLocked(grpc::Status::OK);
            } else {
              std::weak_ptr<WatchReactor> weak = weak_from_this();
              EventPump* pump = pump_;
              wait_id_ = coordinator_->WaitForEvents(job_, scanned_, [weak, pump] {
                if (auto self = weak.lock()) pump->Schedule(std::move(self));
              });
            }
          }
        }
      }
      if (!action.finish && !buffer_.empty()) action = WriteLocked();
    }
    Perform(action);
  }

  void OnWriteDone(bool ok) override {
    auto keep = shared_from_this();
    Action action;
    bool more = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok || cancelled_) {
        action = FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
      } else {
        const bool terminal = IsTerminalEvent(buffer_.front());
        buffer_.pop_front();
        if (terminal) {
          action = FinishLocked(grpc::Status::OK);
        } else if (!buffer_.empty()) {
          action = WriteLocked();
        } else {
          more = true;
        }
      }
    }
    Perform(action);
    if (more) pump_->Schedule(std::move(keep));
  }

  void OnCancel() override { Stop(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")); }

  void Stop(grpc::Status status) {
    auto keep = shared_from_this();
    Action action;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!writing_) action = FinishLocked(std::move(status));
    }
    Perform(action);
  }

  void OnDone() override {
    coordinator_->CancelWait(wait_id_);
    self_.reset();  // may destroy this once the last user lets go
  }

 private:
  // What to do once the lock is released (gRPC may run reactions inline).
  struct Action {
    const v1::JobEvent* write = nullptr;
    std::optional<grpc::Status> finish;
  };
  Action WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = true;
    Action action;
    action.write = &buffer_.front();
    return action;
  }
  Action FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action action;
    if (finished_) return action;
    finished_ = true;
    action.finish = std::move(status);
    return action;
  }
  void Perform(Action& action) {
    if (action.write != nullptr) StartWrite(action.write);
    if (action.finish) Finish(*std::move(action.finish));
  }

  Coordinator* const coordinator_;
  EventPump* const pump_;
  const std::string job_;
  const bool include_steps_;
  absl::Mutex mu_;
  int64_t last_read_ ABSL_GUARDED_BY(mu_);  // events up to here are read (or filtered out)
  int64_t scanned_ ABSL_GUARDED_BY(mu_);    // every event up to here was considered
  std::deque<v1::JobEvent> buffer_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int64_t wait_id_ = 0;
  std::shared_ptr<WatchReactor> self_;
};

void EventPump::Run() {
  while (true) {
    std::shared_ptr<WatchReactor> next;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](EventPump* p)
               ABSL_NO_THREAD_SAFETY_ANALYSIS { return p->stop_ || !p->queue_.empty(); },
          this));
      if (stop_) return;
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next->Step();
  }
}

}  // namespace

struct JobService::Impl : public v1::JobService::CallbackService {
  Impl(Coordinator* c, ServerSecurity s) : core(c), security(std::move(s)) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* ctx,
                                      const v1::CreateJobRequest* request,
                                      v1::Job* response) override {
    return RunUnary(ctx, security, Realm::kUser, response,
                    [&] { return core->CreateJob(*request); });
  }
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const v1::GetJobRequest* request, v1::Job* response) override {
    return RunUnary(ctx, security, Realm::kUser, response, [&] { return core->GetJob(*request); });
  }
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override {
    return RunUnary(ctx, security, Realm::kUser, response,
                    [&] { return core->ListJobs(*request); });
  }
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override {
    return RunUnary(ctx, security, Realm::kUser, response,
                    [&] { return core->CancelJob(*request); });
  }
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* ctx,
                                            const v1::ListCheckpointsRequest* request,
                                            v1::ListCheckpointsResponse* response) override {
    return RunUnary(ctx, security, Realm::kUser, response,
                    [&] { return core->ListCheckpoints(*request); });
  }
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const v1::ListWorkersRequest* request,
                                        v1::ListWorkersResponse* response) override {
    return RunUnary(ctx, security, Realm::kUser, response,
                    [&] { return core->ListWorkers(*request); });
  }

  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchJobRequest* request) override {
    grpc::Status status = security.Check(*ctx, Realm::kUser);
    if (status.ok()) status = ToGrpcStatus(core->CheckWatch(*request));
    if (!status.ok()) {
      // A reactor that only reports the error.
      struct Refused : grpc::ServerWriteReactor<v1::JobEvent> {
        explicit Refused(grpc::Status s) { Finish(std::move(s)); }
        void OnDone() override { delete this; }
      };
      return new Refused(std::move(status));
    }
    auto reactor = std::make_shared<WatchReactor>(core, &pump, *request);
    {
      absl::MutexLock lock(&watchers_mu);
      std::erase_if(watchers, [](const std::weak_ptr<WatchReactor>& w) { return w.expired(); });
      watchers.push_back(reactor);
    }
    reactor->Begin();
    return reactor.get();
  }

  void Shutdown() {
    absl::MutexLock lock(&watchers_mu);
    for (auto& weak : watchers) {
      if (auto w = weak.lock()) {
        w->Stop(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is stopping"));
      }
    }
  }

  Coordinator* const core;
  const ServerSecurity security;
  EventPump pump;
  absl::Mutex watchers_mu;
  std::vector<std::weak_ptr<WatchReactor>> watchers ABSL_GUARDED_BY(watchers_mu);
};

JobService::JobService(Coordinator* coordinator, ServerSecurity security)
    : impl_(std::make_unique<Impl>(coordinator, std::move(security))) {}
JobService::~JobService() = default;
grpc::Service* JobService::service() { return impl_.get(); }
void JobService::Shutdown() { impl_->Shutdown(); }

}  // namespace qtrain::coordinator
