#include "worker/comm/gloo_store.h"

#include <utility>

#include "gloo/common/error.h"

namespace qtrain::comm {

GlooStoreAdapter::GlooStoreAdapter(std::shared_ptr<RendezvousStore> store, std::string prefix,
                                   absl::Time deadline)
    : store_(std::move(store)), prefix_(std::move(prefix)), deadline_(deadline) {}

void GlooStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  absl::Status status = store_->Set(prefix_ + key, std::string(data.begin(), data.end()));
  if (!status.ok()) Fail(std::move(status));
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  const std::string& value = Fetch(key, deadline_);
  return std::vector<char>(value.begin(), value.end());
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) {
  for (const std::string& key : keys) Fetch(key, deadline_);
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys,
                            const std::chrono::milliseconds& timeout) {
  absl::Time deadline = deadline_;
  if (timeout.count() > 0) {
    deadline = std::min(deadline, absl::Now() + absl::FromChrono(timeout));
  }
  for (const std::string& key : keys) Fetch(key, deadline);
}

absl::Status GlooStoreAdapter::error() const {
  absl::MutexLock lock(&mu_);
  return error_;
}

const std::string& GlooStoreAdapter::Fetch(const std::string& key, absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  absl::StatusOr<std::string> value = store_->Get(prefix_ + key, deadline);
  if (!value.ok()) Fail(value.status());
  absl::MutexLock lock(&mu_);
  // std::map never moves its elements, so the reference outlives the lock.
  return cache_.insert_or_assign(key, *std::move(value)).first->second;
}

void GlooStoreAdapter::Fail(absl::Status status) {
  std::string message(status.message());
  {
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = std::move(status);
  }
  throw ::gloo::IoException(message);
}

}  // namespace qtrain::comm
