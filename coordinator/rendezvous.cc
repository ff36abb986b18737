// The rendezvous key-value store: in memory, scoped to one job round, bounded.
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"

namespace qtrain::coordinator {
namespace {

absl::Status CheckKey(absl::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError("key: required");
  return CheckLength(key, kMaxKeyBytes, "key");
}

}  // namespace

absl::Status Coordinator::PutKey(const v1::PutKeyRequest& request) {
  QTRAIN_RETURN_IF_ERROR(CheckKey(request.key()));
  if (request.value().size() > kMaxValueBytes) {  // bytes: any content
    return absl::InvalidArgumentError(absl::StrCat("value: at most ", kMaxValueBytes,
                                                   " bytes (got ", request.value().size(), ")"));
  }
  {
    absl::MutexLock lock(&mu_);
    QTRAIN_ASSIGN_OR_RETURN(JobRecord * record, FindRoundLocked(request.worker(), request.job(),
                                                                request.round(), std::nullopt));
    Round& round = record->round;
    auto it = round.kv.find(request.key());
    if (it == round.kv.end()) {
      if (static_cast<int>(round.kv.size()) >= kMaxKeysPerRound) {
        return absl::ResourceExhaustedError(absl::StrCat("key: round ", round.number, " of ",
                                                         record->job.name(), " already holds ",
                                                         kMaxKeysPerRound, " keys"));
      }
      round.kv.emplace(request.key(), request.value());
    } else {
      it->second = request.value();
    }
    for (auto w = round.waiters.begin(); w != round.waiters.end();) {
      if (w->key != request.key()) {
        ++w;
        continue;
      }
      key_waiter_jobs_.erase(w->id);
      deferred_.push_back([done = std::move(w->done), value = request.value()]() mutable {
        done(std::move(value));
      });
      w = round.waiters.erase(w);
    }
  }
  RunDeferred();
  return absl::OkStatus();
}

int64_t Coordinator::GetKey(const v1::GetKeyRequest& request, absl::Time deadline,
                            GetKeyCallback done) {
  absl::Status invalid = CheckKey(request.key());
  if (!invalid.ok()) {
    done(invalid);
    return 0;
  }
  int64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<JobRecord*> record =
        FindRoundLocked(request.worker(), request.job(), request.round(), std::nullopt);
    if (!record.ok()) {
      deferred_.push_back([done, s = record.status()] { done(s); });
    } else if (auto it = (*record)->round.kv.find(request.key()); it != (*record)->round.kv.end()) {
      deferred_.push_back([done, value = it->second] { done(value); });
    } else if (Now() >= deadline) {
      deferred_.push_back([done, key = request.key()] {
        done(absl::DeadlineExceededError(absl::StrCat("key ", key, " was not set in time")));
      });
    } else {
      id = next_wait_id_++;
      (*record)->round.waiters.push_back(KeyWaiter{id, request.key(), deadline, std::move(done)});
      key_waiter_jobs_[id] = Id((*record)->job.name());
    }
  }
  RunDeferred();
  return id;
}

void Coordinator::CancelGetKey(int64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = key_waiter_jobs_.find(id);
  if (it == key_waiter_jobs_.end()) return;
  auto job = jobs_by_id_.find(it->second);
  key_waiter_jobs_.erase(it);
  if (job == jobs_by_id_.end()) return;
  auto& waiters = job->second->round.waiters;
  for (auto w = waiters.begin(); w != waiters.end(); ++w) {
    if (w->id == id) {
      deferred_.push_back(
          [done = std::move(w->done)] { done(absl::CancelledError("the call was cancelled")); });
      waiters.erase(w);
      break;
    }
  }
}

void Coordinator::ExpireKeyWaitersLocked(std::vector<std::function<void()>>& done) {
  const absl::Time now = Now();
  for (auto& record : jobs_) {
    auto& waiters = record->round.waiters;
    for (auto w = waiters.begin(); w != waiters.end();) {
      if (w->deadline > now) {
        ++w;
        continue;
      }
      key_waiter_jobs_.erase(w->id);
      done.push_back([cb = std::move(w->done), key = w->key] {
        cb(absl::DeadlineExceededError(absl::StrCat("key ", key, " was not set in time")));
      });
      w = waiters.erase(w);
    }
  }
}

void Coordinator::AbortKeyWaitersLocked(Round& round, const std::string& message) {
  for (KeyWaiter& w : round.waiters) {
    key_waiter_jobs_.erase(w.id);
    deferred_.push_back([cb = std::move(w.done), message] { cb(absl::AbortedError(message)); });
  }
  round.waiters.clear();
}

}  // namespace qtrain::coordinator
