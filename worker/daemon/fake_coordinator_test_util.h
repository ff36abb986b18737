// Tests only: an in-process WorkerService that records what workers send and hands out
// directives, answering every heartbeat (with a queued directive when there is one).
#ifndef QTRAIN_WORKER_DAEMON_FAKE_COORDINATOR_TEST_UTIL_H_
#define QTRAIN_WORKER_DAEMON_FAKE_COORDINATOR_TEST_UTIL_H_

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain::worker {

class FakeCoordinator final : public v1::WorkerService::Service {
 public:
  grpc::Status RegisterWorker(grpc::ServerContext*, const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override {
    absl::MutexLock lock(&mu_);
    registrations_.push_back(*request);
    const std::string id = request->worker_id().empty()
                               ? absl::StrCat("fake-", registrations_.size())
                               : request->worker_id();
    known_.push_back(id);
    response->mutable_worker()->set_name("workers/" + id);
    response->set_heartbeat_interval_ms(100);
    response->set_lease_ms(3000);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::HeartbeatResponse, v1::HeartbeatRequest>* stream) override {
    v1::HeartbeatRequest request;
    while (stream->Read(&request)) {
      v1::HeartbeatResponse response;
      {
        absl::MutexLock lock(&mu_);
        const std::string id(absl::StripPrefix(request.worker(), "workers/"));
        if (std::find(known_.begin(), known_.end(), id) == known_.end()) {
          return grpc::Status(grpc::StatusCode::NOT_FOUND,
                              absl::StrCat("no worker ", request.worker()));
        }
        heartbeats_.push_back(request);
        if (!directives_.empty()) {
          *response.mutable_directive() = directives_.front();
          directives_.erase(directives_.begin());
        }
      }
      if (!stream->Write(response)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status CommitCheckpoint(grpc::ServerContext*, const v1::CommitCheckpointRequest* request,
                                v1::CommitCheckpointResponse* response) override {
    absl::MutexLock lock(&mu_);
    commits_.push_back(*request);
    if (!commit_error_.ok()) return commit_error_;
    response->mutable_checkpoint()->set_state(v1::CHECKPOINT_STATE_COMMITTED);
    response->mutable_checkpoint()->set_step(request->step());
    return grpc::Status::OK;
  }

  grpc::Status ReportFailure(grpc::ServerContext*, const v1::ReportFailureRequest* request,
                             v1::ReportFailureResponse*) override {
    absl::MutexLock lock(&mu_);
    failures_.push_back(*request);
    return grpc::Status::OK;
  }

  grpc::Status CompleteAssignment(grpc::ServerContext*,
                                  const v1::CompleteAssignmentRequest* request,
                                  v1::CompleteAssignmentResponse*) override {
    absl::MutexLock lock(&mu_);
    completions_.push_back(*request);
    return grpc::Status::OK;
  }

  void Send(v1::Directive directive) {
    absl::MutexLock lock(&mu_);
    directives_.push_back(std::move(directive));
  }
  void KnowWorker(const std::string& id) {
    absl::MutexLock lock(&mu_);
    known_.push_back(id);
  }
  void FailCommits(grpc::Status status) {
    absl::MutexLock lock(&mu_);
    commit_error_ = std::move(status);
  }

  // Waits until `pred` holds over the records (at most `timeout`).
  bool WaitFor(const std::function<bool(FakeCoordinator&)>& pred,
               absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      {
        absl::MutexLock lock(&mu_);
        if (pred(*this)) return true;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }
  template <typename F>
  auto Read(F f) {
    absl::MutexLock lock(&mu_);
    return f(*this);
  }

  // Read inside WaitFor/Read only.
  std::vector<v1::RegisterWorkerRequest> registrations_;
  std::vector<v1::HeartbeatRequest> heartbeats_;
  std::vector<v1::CommitCheckpointRequest> commits_;
  std::vector<v1::ReportFailureRequest> failures_;
  std::vector<v1::CompleteAssignmentRequest> completions_;

  bool SawPhase(v1::WorkerPhase phase) const {
    for (const auto& h : heartbeats_) {
      if (h.phase() == phase) return true;
    }
    return false;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> known_;
  std::vector<v1::Directive> directives_;
  grpc::Status commit_error_ = grpc::Status::OK;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_FAKE_COORDINATOR_TEST_UTIL_H_
