#include "worker/daemon/cancellable_store.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace qtrain::worker {
namespace {

class CancellableStore final : public comm::RendezvousStore {
 public:
  CancellableStore(std::shared_ptr<comm::RendezvousStore> store, std::function<bool()> cancelled,
                   absl::Duration slice)
      : store_(std::move(store)), cancelled_(std::move(cancelled)), slice_(slice) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    if (cancelled_()) return Cancelled(key);
    return store_->Set(key, value);
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) override {
    while (true) {
      if (cancelled_()) return Cancelled(key);
      const absl::Time until = std::min(deadline, absl::Now() + slice_);
      absl::StatusOr<std::string> value = store_->Get(key, until);
      if (value.ok() || !absl::IsDeadlineExceeded(value.status()) || until >= deadline) {
        return value;
      }
    }
  }

 private:
  static absl::Status Cancelled(const std::string& key) {
    return absl::CancelledError(
        absl::StrCat("stopped during the group's rendezvous (waiting for key ", key, ")"));
  }

  const std::shared_ptr<comm::RendezvousStore> store_;
  const std::function<bool()> cancelled_;
  const absl::Duration slice_;
};

}  // namespace

std::shared_ptr<comm::RendezvousStore> MakeCancellableStore(
    std::shared_ptr<comm::RendezvousStore> store, std::function<bool()> cancelled,
    absl::Duration slice) {
  return std::make_shared<CancellableStore>(std::move(store), std::move(cancelled),
                                            std::max(slice, absl::Milliseconds(1)));
}

}  // namespace qtrain::worker
