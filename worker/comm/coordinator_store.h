// The production rendezvous store: the coordinator's PutKey / GetKey RPCs (WorkerService),
// keys scoped by the coordinator to (job, round); GetKey blocks on the coordinator until the
// key is set or the request's deadline passes.
#ifndef QTRAIN_WORKER_COMM_COORDINATOR_STORE_H_
#define QTRAIN_WORKER_COMM_COORDINATOR_STORE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/rpc_channel.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::comm {

struct CoordinatorStoreOptions {
  // How to reach the coordinator (address, cluster token, TLS), as the worker daemon does.
  ChannelOptions channel;
  std::string worker;  // "workers/{id}"
  std::string job;     // "jobs/{id}"
  int64_t round = 0;
};

// Retries UNAVAILABLE (a coordinator restart) with backoff until the Get's deadline; any other
// error of the coordinator (a stale round: FAILED_PRECONDITION) is returned at once.
absl::StatusOr<std::shared_ptr<RendezvousStore>> MakeCoordinatorStore(
    const CoordinatorStoreOptions& options);

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_COORDINATOR_STORE_H_
