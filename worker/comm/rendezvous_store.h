// The key-value store a group's members find each other through (Gloo's rendezvous): a
// worker's listening address is Set under a key, the peers Get it, blocking until it is set.
// The coordinator's PutKey/GetKey RPCs are the production store (coordinator_store.h); an
// in-memory one serves tests and benchmarks in one process, a directory one benchmarks across
// processes of one machine.
#ifndef QTRAIN_WORKER_COMM_RENDEZVOUS_STORE_H_
#define QTRAIN_WORKER_COMM_RENDEZVOUS_STORE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace qtrain::comm {

class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  // Sets (or replaces) key.
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The value of key, waiting until it is set; DEADLINE_EXCEEDED naming the key when it is not
  // set by `deadline`.
  virtual absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) = 0;
};

// One process's threads (tests): a shared map, shared by the returned store's copies.
std::shared_ptr<RendezvousStore> MakeInMemoryStore();

// Files under `directory` (created if needed), written atomically: processes of one machine
// (benchmarks). Get polls.
absl::StatusOr<std::shared_ptr<RendezvousStore>> MakeDirectoryStore(const std::string& directory);

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_RENDEZVOUS_STORE_H_
