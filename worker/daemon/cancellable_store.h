// A rendezvous store whose blocking Get gives up when the training child is stopping: the
// wait is cut into short slices and the stop is checked between them, so a SIGTERM during a
// group's rendezvous ends the child promptly instead of after the whole connect timeout.
#ifndef QTRAIN_WORKER_DAEMON_CANCELLABLE_STORE_H_
#define QTRAIN_WORKER_DAEMON_CANCELLABLE_STORE_H_

#include <functional>
#include <memory>

#include "absl/time/time.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::worker {

// Get returns CANCELLED once `cancelled()` is true; otherwise what `store` answers, waiting
// at most `slice` per call of store->Get.
std::shared_ptr<comm::RendezvousStore> MakeCancellableStore(
    std::shared_ptr<comm::RendezvousStore> store, std::function<bool()> cancelled,
    absl::Duration slice = absl::Milliseconds(250));

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_CANCELLABLE_STORE_H_
