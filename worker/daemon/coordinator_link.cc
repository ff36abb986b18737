#include "worker/daemon/coordinator_link.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "grpcpp/channel.h"
#include "worker/daemon/backoff.h"

namespace qtrain::worker {
namespace {

constexpr char kWorkersPrefix[] = "workers/";

bool Retryable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

}  // namespace

CoordinatorLink::CoordinatorLink(RpcClient client, const WorkDir* work_dir, LinkOptions options)
    : client_(std::move(client)),
      work_dir_(work_dir),
      options_(std::move(options)),
      stub_(v1::WorkerService::NewStub(client_.channel())) {}

CoordinatorLink::~CoordinatorLink() { Stop(); }

void CoordinatorLink::Start() {
  QTRAIN_LOG(INFO) << "connecting to the coordinator at " << client_.address();
  thread_ = std::thread([this] { Run(); });
}

void CoordinatorLink::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (stream_context_ != nullptr) stream_context_->TryCancel();
    for (grpc::ClientContext* context : call_contexts_) context->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

bool CoordinatorLink::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

bool CoordinatorLink::SleepUnlessStopped(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  return !mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
}

std::string CoordinatorLink::worker_name() const {
  absl::MutexLock lock(&mu_);
  return worker_name_;
}

absl::Duration CoordinatorLink::heartbeat_interval() const {
  absl::MutexLock lock(&mu_);
  return heartbeat_interval_;
}

absl::Duration CoordinatorLink::lease() const {
  absl::MutexLock lock(&mu_);
  return lease_;
}

void CoordinatorLink::NoteNotFound(const absl::Status& status) {
  if (!absl::IsNotFound(status)) return;
  absl::MutexLock lock(&mu_);
  // NOT_FOUND also names unknown jobs: only one about this worker means "register again".
  if (!worker_name_.empty() && absl::StrContains(status.message(), worker_name_)) {
    need_register_ = true;
  }
}

absl::Status CoordinatorLink::Register() {
  v1::RegisterWorkerRequest request = options_.registration;
  absl::StatusOr<std::optional<std::string>> saved = work_dir_->ReadWorkerId();
  if (!saved.ok()) return saved.status();
  if (saved->has_value()) request.set_worker_id(**saved);
  v1::RegisterWorkerResponse response;
  auto call = [&](const v1::RegisterWorkerRequest& r) {
    return CallOnce("RegisterWorker",
                    [&](v1::WorkerService::Stub& stub, grpc::ClientContext* context) {
                      return stub.RegisterWorker(context, r, &response);
                    });
  };
  absl::Status status = call(request);
  if (absl::IsNotFound(status) && !request.worker_id().empty()) {
    // The coordinator's state no longer has this id: start over as a new worker.
    QTRAIN_LOG(WARNING) << "the coordinator does not know worker " << request.worker_id()
                        << "; registering as a new worker";
    request.clear_worker_id();
    status = call(request);
  }
  if (!status.ok()) return status;
  const std::string name = response.worker().name();
  const absl::string_view id = absl::StripPrefix(name, kWorkersPrefix);
  if (!absl::StartsWith(name, kWorkersPrefix) || !IsValidWorkerId(id)) {
    return absl::InternalError(absl::StrCat(
        "the coordinator answered RegisterWorker with an invalid worker name '", name, "'"));
  }
  if (!saved->has_value() || **saved != id) {
    QTRAIN_RETURN_IF_ERROR(work_dir_->WriteWorkerId(std::string(id)));
  }
  absl::MutexLock lock(&mu_);
  worker_name_ = name;
  need_register_ = false;
  if (response.heartbeat_interval_ms() > 0) {
    heartbeat_interval_ = absl::Milliseconds(response.heartbeat_interval_ms());
  }
  if (response.lease_ms() > 0) lease_ = absl::Milliseconds(response.lease_ms());
  QTRAIN_LOG(INFO) << "registered as " << name << " with the coordinator at " << client_.address()
                   << " (heartbeat every " << absl::FormatDuration(heartbeat_interval_)
                   << ", lease " << absl::FormatDuration(lease_) << ")";
  return absl::OkStatus();
}

absl::Status CoordinatorLink::RunStream() {
  std::unique_ptr<grpc::ClientContext> context = client_.NewStreamContext();
  // Wait for the channel to connect rather than fail on its last (cached) failure: the stream
  // then opens as soon as a restarted coordinator listens. Stop() cancels the wait.
  context->set_wait_for_ready(true);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("stopping");
    stream_context_ = context.get();
  }
  std::unique_ptr<grpc::ClientReaderWriter<v1::HeartbeatRequest, v1::HeartbeatResponse>> stream =
      stub_->Heartbeat(context.get());
  {
    absl::MutexLock lock(&write_mu_);
    stream_ = stream.get();
  }
  if (options_.on_connected) options_.on_connected();
  v1::HeartbeatResponse response;
  bool answered = false;
  while (stream->Read(&response)) {
    if (!answered) {
      answered = true;
      if (options_.on_stream_up) options_.on_stream_up(true);
      if (broken_) {
        QTRAIN_LOG(INFO) << "reconnected to the coordinator at " << client_.address();
        broken_ = false;
      }
    }
    if (response.has_directive() && options_.on_directive) {
      options_.on_directive(response.directive());
    }
  }
  if (answered && options_.on_stream_up) options_.on_stream_up(false);
  {
    absl::MutexLock lock(&write_mu_);
    stream_ = nullptr;
  }
  const grpc::Status finished = stream->Finish();
  {
    absl::MutexLock lock(&mu_);
    stream_context_ = nullptr;
  }
  if (finished.ok()) return absl::UnavailableError("the coordinator ended the heartbeat stream");
  return client_.Describe(finished, "Heartbeat");
}

void CoordinatorLink::Run() {
  Backoff backoff(options_.reconnect_initial, options_.reconnect_max);
  std::string last_error;
  while (!stopping()) {
    bool need_register;
    {
      absl::MutexLock lock(&mu_);
      need_register = need_register_;
    }
    absl::Status status = need_register ? Register() : absl::OkStatus();
    const char* what = status.ok() ? "heartbeat stream broke: " : "registration failed: ";
    if (status.ok()) {
      const absl::Time opened = absl::Now();
      status = RunStream();
      if (stopping()) break;
      // A stream that lived a while was a good connection: start the backoff over.
      if (absl::Now() - opened > options_.reconnect_max) backoff.Reset();
      NoteNotFound(status);
      broken_ = true;
    }
    if (stopping()) break;  // the error is the cancellation
    const absl::Duration wait = backoff.Next();
    QTRAIN_LOG(DEBUG) << what << status.message() << "; next attempt in "
                      << absl::FormatDuration(wait);
    if (status.ToString() != last_error) {
      // One line per distinct problem, not one per attempt.
      QTRAIN_LOG(WARNING) << what << status.message() << "; reconnecting (backoff up to "
                          << absl::FormatDuration(options_.reconnect_max) << ")";
      last_error = status.ToString();
    }
    if (!SleepUnlessStopped(wait)) break;
    grpc::experimental::ChannelResetConnectionBackoff(client_.channel().get());
    QTRAIN_LOG(DEBUG) << "reconnecting to " << client_.address();
  }
}

bool CoordinatorLink::SendHeartbeat(v1::HeartbeatRequest request) {
  const std::string name = worker_name();
  if (name.empty()) return false;
  absl::MutexLock lock(&write_mu_);
  if (stream_ == nullptr) return false;
  request.set_worker(name);
  request.set_sequence(++sequence_);
  return stream_->Write(request);
}

absl::Status CoordinatorLink::CallOnce(absl::string_view what, const UnaryCall& call) {
  std::unique_ptr<grpc::ClientContext> context = client_.NewContext(options_.rpc_timeout);
  context->set_wait_for_ready(true);  // as for the stream, within the call's deadline
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError(absl::StrCat(what, ": the worker is stopping"));
    call_contexts_.push_back(context.get());
  }
  const grpc::Status result = call(*stub_, context.get());
  {
    absl::MutexLock lock(&mu_);
    std::erase(call_contexts_, context.get());
  }
  return client_.Describe(result, std::string_view(what.data(), what.size()));
}

absl::Status CoordinatorLink::Call(absl::string_view what, const UnaryCall& call,
                                   const std::function<bool()>& keep_trying) {
  Backoff backoff(options_.reconnect_initial, options_.reconnect_max);
  bool logged = false;
  while (true) {
    const absl::Status status = CallOnce(what, call);
    NoteNotFound(status);
    if (!Retryable(status) || stopping() || !keep_trying()) return status;
    if (!logged) {
      QTRAIN_LOG(WARNING) << what << " failed: " << status.message() << "; retrying";
      logged = true;
    }
    if (!SleepUnlessStopped(backoff.Next())) return status;
    grpc::experimental::ChannelResetConnectionBackoff(client_.channel().get());
  }
}

}  // namespace qtrain::worker
