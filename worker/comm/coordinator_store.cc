// The coordinator's PutKey / GetKey as a rendezvous store.
#include "worker/comm/coordinator_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain::comm {
namespace {

// A Set has no deadline of its own: it retries a restarting coordinator this long.
constexpr absl::Duration kSetRetryWindow = absl::Seconds(60);
constexpr absl::Duration kPutTimeout = absl::Seconds(10);
constexpr absl::Duration kInitialBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(1);

class CoordinatorStore final : public RendezvousStore {
 public:
  CoordinatorStore(RpcClient client, CoordinatorStoreOptions options)
      : client_(std::move(client)),
        options_(std::move(options)),
        stub_(v1::WorkerService::NewStub(client_.channel())) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    v1::PutKeyRequest request;
    request.set_worker(options_.worker);
    request.set_job(options_.job);
    request.set_round(options_.round);
    request.set_key(key);
    request.set_value(value);
    const absl::Time give_up = absl::Now() + kSetRetryWindow;
    absl::Duration backoff = kInitialBackoff;
    while (true) {
      const absl::Duration timeout = std::min(kPutTimeout, give_up - absl::Now());
      std::unique_ptr<grpc::ClientContext> context = client_.NewContext(timeout);
      v1::PutKeyResponse response;
      const grpc::Status status = stub_->PutKey(context.get(), request, &response);
      if (status.ok()) return absl::OkStatus();
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() >= give_up) {
        return Annotate(client_.Describe(status, "PutKey", timeout), key);
      }
      Sleep(backoff, give_up);
    }
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) override {
    v1::GetKeyRequest request;
    request.set_worker(options_.worker);
    request.set_job(options_.job);
    request.set_round(options_.round);
    request.set_key(key);
    absl::Duration backoff = kInitialBackoff;
    absl::Status unreachable;  // the latest UNAVAILABLE, for the message at the deadline
    while (true) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        if (unreachable.ok()) return NotSet(key, deadline);
        return absl::DeadlineExceededError(absl::StrCat(
            "rendezvous key '", key, "' was not read by the deadline: ", unreachable.message()));
      }
      std::unique_ptr<grpc::ClientContext> context = client_.NewContext(left);
      v1::GetKeyResponse response;
      const grpc::Status status = stub_->GetKey(context.get(), request, &response);
      if (status.ok()) return std::move(*response.mutable_value());
      if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        return NotSet(key, deadline);
      }
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
        return Annotate(client_.Describe(status, "GetKey", left), key);
      }
      unreachable = client_.Describe(status, "GetKey", left);
      Sleep(backoff, deadline);
    }
  }

 private:
  // Sleeps the backoff, or until `limit` when sooner, and doubles the backoff.
  static void Sleep(absl::Duration& backoff, absl::Time limit) {
    absl::SleepFor(std::max(absl::ZeroDuration(), std::min(backoff, limit - absl::Now())));
    backoff = std::min(kMaxBackoff, backoff * 2);
  }
  absl::Status NotSet(const std::string& key, absl::Time deadline) const {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous key '", key, "' of ", options_.job, " round ", options_.round,
                     " was not set by ", absl::FormatTime(deadline, absl::UTCTimeZone())));
  }
  static absl::Status Annotate(const absl::Status& status, const std::string& key) {
    return absl::Status(status.code(),
                        absl::StrCat("rendezvous key '", key, "': ", status.message()));
  }

  RpcClient client_;
  const CoordinatorStoreOptions options_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<RendezvousStore>> MakeCoordinatorStore(
    const CoordinatorStoreOptions& options) {
  if (options.worker.empty() || options.job.empty() || options.round <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "coordinator rendezvous store: worker '", options.worker, "', job '", options.job,
        "', round ", options.round, " (a worker, a job and a round >= 1 are needed)"));
  }
  QTRAIN_ASSIGN_OR_RETURN(RpcClient client, RpcClient::Create(options.channel));
  return std::make_shared<CoordinatorStore>(std::move(client), options);
}

}  // namespace qtrain::comm
