// Client side of qtrain's RPCs: channels (plaintext or TLS, optionally with a client
// certificate), the bearer token on every call, deadlines, and one readable line for a failed
// call instead of gRPC's debug text.
#ifndef QTRAIN_COMMON_RPC_CHANNEL_H_
#define QTRAIN_COMMON_RPC_CHANNEL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"

namespace qtrain {

struct ChannelOptions {
  std::string address;     // HOST:PORT
  std::string token_file;  // bearer token sent on every call (optional)
  std::string tls_ca;      // PEM of the CA that signed the server's cert: use TLS
  std::string tls_cert;    // PEM client certificate and key (mTLS), with tls_ca
  std::string tls_key;
  std::string tls_server_name;  // override the name checked in the server's certificate
  int max_message_bytes = 64 << 20;
};

// A connected-on-demand channel plus what every call needs. After a lost connection the
// channel retries with a backoff of at most 1 s, so a restarted coordinator is found quickly;
// open calls send keepalive pings every 20 s, so a vanished one is noticed.
class RpcClient {
 public:
  // Reads the token and TLS files; INVALID_ARGUMENT naming a bad address or file.
  static absl::StatusOr<RpcClient> Create(const ChannelOptions& options);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const std::string& address() const { return address_; }

  // A context with the deadline (now + timeout; none for an infinite timeout) and the token.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::Duration timeout) const;
  // The same for a stream that lives as long as the caller wants (no deadline).
  std::unique_ptr<grpc::ClientContext> NewStreamContext() const;

  // An absl status (same code) with one line a person can act on: "cannot reach the
  // coordinator at 127.0.0.1:7070: connection refused; is it running?" for UNAVAILABLE,
  // "cannot reach the coordinator at 127.0.0.1:7070: GetJob did not answer within 10s" for
  // DEADLINE_EXCEEDED, "the coordinator at ... refused the token: invalid bearer token" for
  // UNAUTHENTICATED; other codes: "GetJob: <server message>". `what` names the call
  // ("GetJob"). The timeout quoted is that of the latest NewContext.
  absl::Status Describe(const grpc::Status& status, std::string_view what) const;
  // The same, quoting `timeout` for DEADLINE_EXCEEDED.
  absl::Status Describe(const grpc::Status& status, std::string_view what,
                        absl::Duration timeout) const;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::string address_;
  std::string token_;
  // The timeout of the latest NewContext, in ms (-1: none yet), for Describe; shared by copies.
  std::shared_ptr<std::atomic<int64_t>> last_timeout_;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RPC_CHANNEL_H_
