// The CPU collectives: Gloo over TCP, every op built from Gloo's unbound-buffer sends and
// receives in a fixed pattern (not Gloo's ring algorithms, whose sum order depends on W), so
// the results are the deterministic ones communicator.h defines.
//
//   QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
//                           GlooCommunicator::Connect({.rank = r, .world_size = w,
//                                                      .store = store, .prefix = p}));
#ifndef QTRAIN_WORKER_COMM_GLOO_COMMUNICATOR_H_
#define QTRAIN_WORKER_COMM_GLOO_COMMUNICATOR_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::comm {

struct GlooOptions {
  int rank = 0;
  int world_size = 1;
  // Where the members exchange their addresses; keys are written under `prefix`.
  std::shared_ptr<RendezvousStore> store;
  std::string prefix;
  // The address this rank listens on for its peers (an IP address or a host name that
  // resolves to one of this machine's interfaces); its port is chosen by the system.
  std::string listen_host = "127.0.0.1";
  // How long Connect waits for every peer (the store's Get and the TCP connections).
  absl::Duration connect_timeout = absl::Seconds(60);
  // Every op fails with DEADLINE_EXCEEDED when it has not completed within this.
  absl::Duration op_timeout = absl::Seconds(60);
  // When set (the caller owns it; any thread may set it to true), a Connect still waiting for
  // its peers' addresses gives up with CANCELLED within about a quarter of a second.
  const std::atomic<bool>* cancel = nullptr;
};

class GlooCommunicator {
 public:
  // Rendezvous and a full mesh of TCP connections. DEADLINE_EXCEEDED naming the ranks that
  // did not show up in connect_timeout; UNAVAILABLE when a connection fails; INVALID_ARGUMENT
  // for bad options.
  static absl::StatusOr<std::unique_ptr<Communicator>> Connect(const GlooOptions& options);
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_GLOO_COMMUNICATOR_H_
