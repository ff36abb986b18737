#include "coordinator/worker_service.h"

#include <chrono>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "coordinator/unary.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain::coordinator {
namespace {

// The Heartbeat stream: one read, its answer, the next read (never two operations at once).
class HeartbeatReactor
    : public grpc::ServerBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse> {
 public:
  HeartbeatReactor(Coordinator* coordinator, grpc::Status auth) : coordinator_(coordinator) {
    if (!auth.ok()) {
      Finish(std::move(auth));
      return;
    }
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);  // the worker closed its side (or went away)
      return;
    }
    absl::StatusOr<v1::HeartbeatResponse> response = coordinator_->Heartbeat(request_);
    if (!response.ok()) {
      Finish(ToGrpcStatus(response.status()));
      return;
    }
    response_ = *std::move(response);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the worker went away"));
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  Coordinator* const coordinator_;
  v1::HeartbeatRequest request_;
  v1::HeartbeatResponse response_;
};

// GetKey waits without holding a thread: the coordinator completes it.
class GetKeyReactor : public grpc::ServerUnaryReactor {
 public:
  GetKeyReactor(Coordinator* coordinator, grpc::CallbackServerContext* context,
                const ServerSecurity& security, const v1::GetKeyRequest* request,
                v1::GetKeyResponse* response)
      : coordinator_(coordinator), response_(response) {
    if (grpc::Status auth = security.Check(*context, Realm::kCluster); !auth.ok()) {
      Finish(std::move(auth));
      return;
    }
    // No deadline (or a far one): wait at most an hour.
    absl::Time deadline = absl::FromChrono(context->deadline());
    deadline = std::min(deadline, absl::Now() + absl::Hours(1));
    // The callback may finish (and delete) this reactor on another thread before GetKey
    // returns: only the shared wait id is touched afterwards.
    std::shared_ptr<WaitId> wait = wait_;
    const int64_t id =
        coordinator_->GetKey(*request, deadline, [this](absl::StatusOr<std::string> value) {
          if (value.ok()) response_->set_value(*std::move(value));
          Finish(ToGrpcStatus(value.status()));
        });
    absl::MutexLock lock(&wait->mu);
    wait->id = id;
  }
  void OnCancel() override {
    int64_t id;
    {
      absl::MutexLock lock(&wait_->mu);
      id = wait_->id;
    }
    if (id != 0) coordinator_->CancelGetKey(id);
  }
  void OnDone() override { delete this; }

 private:
  Coordinator* const coordinator_;
  v1::GetKeyResponse* const response_;
  struct WaitId {
    absl::Mutex mu;
    int64_t id ABSL_GUARDED_BY(mu) = 0;
  };
  std::shared_ptr<WaitId> wait_ = std::make_shared<WaitId>();
};

}  // namespace

struct WorkerService::Impl : public v1::WorkerService::CallbackService {
  Impl(Coordinator* c, ServerSecurity s) : core(c), security(std::move(s)) {}

  grpc::ServerUnaryReactor* RegisterWorker(grpc::CallbackServerContext* ctx,
                                           const v1::RegisterWorkerRequest* request,
                                           v1::RegisterWorkerResponse* response) override {
    return RunUnary(ctx, security, Realm::kCluster, response,
                    [&] { return core->RegisterWorker(*request); });
  }
  grpc::ServerBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse>* Heartbeat(
      grpc::CallbackServerContext* ctx) override {
    return new HeartbeatReactor(core, security.Check(*ctx, Realm::kCluster));
  }
  grpc::ServerUnaryReactor* PutKey(grpc::CallbackServerContext* ctx,
                                   const v1::PutKeyRequest* request,
                                   v1::PutKeyResponse* response) override {
    return RunUnary(ctx, security, Realm::kCluster, response,
                    [&] { return core->PutKey(*request); });
  }
  grpc::ServerUnaryReactor* GetKey(grpc::CallbackServerContext* ctx,
                                   const v1::GetKeyRequest* request,
                                   v1::GetKeyResponse* response) override {
    return new GetKeyReactor(core, ctx, security, request, response);
  }
  grpc::ServerUnaryReactor* CommitCheckpoint(grpc::CallbackServerContext* ctx,
                                             const v1::CommitCheckpointRequest* request,
                                             v1::CommitCheckpointResponse* response) override {
    return RunUnary(ctx, security, Realm::kCluster, response,
                    [&] { return core->CommitCheckpoint(*request); });
  }
  grpc::ServerUnaryReactor* ReportFailure(grpc::CallbackServerContext* ctx,
                                          const v1::ReportFailureRequest* request,
                                          v1::ReportFailureResponse* response) override {
    return RunUnary(ctx, security, Realm::kCluster, response,
                    [&] { return core->ReportFailure(*request); });
  }
  grpc::ServerUnaryReactor* CompleteAssignment(grpc::CallbackServerContext* ctx,
                                               const v1::CompleteAssignmentRequest* request,
                                               v1::CompleteAssignmentResponse* response) override {
    return RunUnary(ctx, security, Realm::kCluster, response,
                    [&] { return core->CompleteAssignment(*request); });
  }

  Coordinator* const core;
  const ServerSecurity security;
};

WorkerService::WorkerService(Coordinator* coordinator, ServerSecurity security)
    : impl_(std::make_unique<Impl>(coordinator, std::move(security))) {}
WorkerService::~WorkerService() = default;
grpc::Service* WorkerService::service() { return impl_.get(); }

}  // namespace qtrain::coordinator
