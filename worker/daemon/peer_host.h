// The address a worker's collectives listen on (`--peer-host`): checked where it is given, so
// that a typo is a clear error at startup rather than a rendezvous that never completes.
#ifndef QTRAIN_WORKER_DAEMON_PEER_HOST_H_
#define QTRAIN_WORKER_DAEMON_PEER_HOST_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace qtrain::worker {

// The longest collective timeout accepted (`--collective-timeout-seconds`).
inline constexpr absl::Duration kMaxCollectiveTimeout = absl::Hours(24);

// Why `host` cannot be a listening address (an IPv4/IPv6 address or a host name), if it
// cannot: empty, longer than 253 bytes, or holding characters no host name or address has.
std::optional<std::string> PeerHostProblem(absl::string_view host);

// Why `timeout` cannot bound a collective, if it cannot: not positive or over a day.
std::optional<std::string> CollectiveTimeoutProblem(absl::Duration timeout);

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_PEER_HOST_H_
