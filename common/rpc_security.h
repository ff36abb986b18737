// Who may call a qtrain daemon (DESIGN: security defaults).
//
// - Listening on loopback (127.0.0.0/8, ::1, "localhost") needs nothing.
// - Listening on any other address is refused at start unless both a user token
//   (--auth-token-file: the JobService) and a cluster token (--cluster-token-file: the
//   WorkerService) are given. Tokens are bearer metadata ("authorization: Bearer <token>"),
//   checked on every RPC with a constant-time compare; a wrong or missing one is
//   UNAUTHENTICATED. Tokens never appear in logs, errors or metrics.
// - --tls-cert/--tls-key serve TLS; --tls-client-ca also requires client certificates (mTLS).
// - grpc.health.v1 needs no token (probes); reflection needs either token when tokens are set.
#ifndef QTRAIN_COMMON_RPC_SECURITY_H_
#define QTRAIN_COMMON_RPC_SECURITY_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace qtrain {

// True for an address whose host is loopback: "127.x.y.z:P", "[::1]:P", "localhost:P".
bool IsLoopbackAddress(std::string_view host_port);

// Splits "HOST:PORT" / "[V6]:PORT"; INVALID_ARGUMENT naming the address when malformed (no
// port, port not in [0, 65535], empty host).
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(std::string_view host_port);

// "HOST:PORT", bracketing an IPv6 host: the inverse of SplitHostPort.
std::string JoinHostPort(std::string_view host, int port);

// True when a == b, in a time that depends on neither content nor length (both are hashed
// with SHA-256 and the digests compared with a fixed-length loop).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Reads a token file: its content with surrounding whitespace trimmed; INVALID_ARGUMENT for an
// empty token or one with characters other than printable ASCII (never quoting the token).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

struct ServerSecurityOptions {
  std::string listen;              // the --listen address
  std::string auth_token_file;     // users (JobService)
  std::string cluster_token_file;  // workers (WorkerService)
  std::string tls_cert;            // PEM; with tls_key: serve TLS
  std::string tls_key;
  std::string tls_client_ca;  // PEM; require and verify client certificates
};

// Which token an RPC needs.
enum class Realm { kUser, kCluster, kEither };

class ServerSecurity {
 public:
  // Reads the token and TLS files. FAILED_PRECONDITION for a non-loopback listen address
  // without both tokens (the message says which flags to give); INVALID_ARGUMENT for a
  // missing or unreadable file, a cert without a key (or the reverse), a client CA without a
  // cert.
  static absl::StatusOr<ServerSecurity> Load(const ServerSecurityOptions& options);

  // TLS (optionally mTLS) or insecure credentials for the listening port.
  std::shared_ptr<grpc::ServerCredentials> credentials() const;

  // OK when the realm needs no token or the call carries the right one; UNAUTHENTICATED
  // otherwise ("missing bearer token" / "invalid bearer token").
  grpc::Status Check(const grpc::ServerContextBase& context, Realm realm) const;

  bool tls() const { return !cert_pem_.empty(); }
  bool requires_tokens() const { return user_token_.has_value() || cluster_token_.has_value(); }

 private:
  std::optional<std::string> user_token_;
  std::optional<std::string> cluster_token_;
  std::string cert_pem_, key_pem_, client_ca_pem_;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RPC_SECURITY_H_
