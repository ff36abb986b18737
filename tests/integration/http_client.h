// A minimal HTTP/1.1 client for tests: one request per connection ("Connection: close"), to a
// HOST:PORT on loopback, with a deadline on everything. Enough to read a /metrics endpoint and
// to query the Prometheus HTTP API.
#ifndef QTRAIN_TESTS_INTEGRATION_HTTP_CLIENT_H_
#define QTRAIN_TESTS_INTEGRATION_HTTP_CLIENT_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace qtrain::testing_http {

struct HttpResponse {
  int status = 0;                              // e.g. 200
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;                            // de-chunked
};

// Sends `method` `target` (path and query, e.g. "/api/v1/query?query=up") to `host_port`
// ("127.0.0.1:9090", "[::1]:9090") with `body` (sent with Content-Type
// application/x-www-form-urlencoded when not empty). UNAVAILABLE when it cannot connect,
// DEADLINE_EXCEEDED past `timeout`, DATA_LOSS for a malformed response.
absl::StatusOr<HttpResponse> HttpRequest(const std::string& host_port, const std::string& method,
                                         const std::string& target, const std::string& body = "",
                                         absl::Duration timeout = absl::Seconds(10));

inline absl::StatusOr<HttpResponse> HttpGet(const std::string& host_port, const std::string& target,
                                            absl::Duration timeout = absl::Seconds(10)) {
  return HttpRequest(host_port, "GET", target, "", timeout);
}

// Sends `bytes` as they are (a malformed request, say) and returns what comes back until the
// server closes the connection. Errors as HttpRequest.
absl::StatusOr<std::string> HttpRawExchange(const std::string& host_port, const std::string& bytes,
                                            absl::Duration timeout = absl::Seconds(5));

// The status line ("HTTP/1.1 400 Bad Request") of the answer to `bytes`; "" when none came.
std::string RawStatusLine(const std::string& host_port, const std::string& bytes,
                          absl::Duration timeout = absl::Seconds(5));

// Percent-encodes `text` for a query string or form body (RFC 3986 unreserved kept).
std::string UrlEncode(const std::string& text);

}  // namespace qtrain::testing_http

#endif  // QTRAIN_TESTS_INTEGRATION_HTTP_CLIENT_H_
