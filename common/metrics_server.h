// The Prometheus endpoint of a daemon: an HTTP server on `listen` that serves the registry's
// metrics in the text exposition format at /metrics and nothing else (any other path is 404).
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> server,
//                           MetricsServer::Start({.listen = "127.0.0.1:0"}, registry));
//   ... server->address() ...   // "127.0.0.1:41234"
#ifndef QTRAIN_COMMON_METRICS_SERVER_H_
#define QTRAIN_COMMON_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/collectable.h"
#include "prometheus/registry.h"

namespace qtrain {

struct MetricsServerOptions {
  // "HOST:PORT" (IPv6 as "[::1]:PORT"); port 0 picks a free one.
  std::string listen;
};

// INVALID_ARGUMENT naming the flag when `listen` is not HOST:PORT with a port in [0, 65535].
absl::Status CheckMetricsListen(const std::string& listen, const std::string& flag);

// The whole HTTP/1.1 response to a request whose head (request line and headers, without the
// blank line) is `head`: 200 with `metrics` in the text format for GET /metrics (a query string
// is ignored), 404 for other paths, 405 for other methods, 505 for other HTTP versions, 400 for
// anything malformed. Never fails; public for tests and the fuzz target.
std::string MetricsHttpResponse(absl::string_view head, const prometheus::Collectable& metrics);

class MetricsServer {
 public:
  // Binds and serves. INVALID_ARGUMENT for a malformed address, UNAVAILABLE naming the address
  // when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const MetricsServerOptions& options, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();  // stops serving

  // "HOST:PORT" with the port actually bound.
  const std::string& address() const;

  class Impl;

 private:
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_METRICS_SERVER_H_
