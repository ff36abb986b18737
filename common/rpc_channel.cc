#include "common/rpc_channel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/grpc_status.h"
#include "common/rpc_security.h"
#include "common/status_macros.h"
#include "common/tls_files.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace qtrain {
namespace {

// absl here is built with its own string_view; the headers speak std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t kMaxReasonChars = 160;
// After the coordinator went away, reconnect attempts back off to at most this, so that a
// restarted coordinator is found again within about a second.
constexpr int kMaxReconnectBackoffMs = 1000;
constexpr int kKeepaliveTimeMs = 20000;
constexpr absl::Duration kLongestDeadline = absl::Hours(24 * 365);
constexpr int kKeepaliveTimeoutMs = 10000;

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const ChannelOptions& options) {
  if (options.tls_ca.empty()) {
    if (!options.tls_cert.empty() || !options.tls_key.empty()) {
      return absl::InvalidArgumentError(
          "--tls-cert/--tls-key need --tls-ca (the CA that signed the coordinator's certificate)");
    }
    if (!options.tls_server_name.empty()) {
      return absl::InvalidArgumentError("--tls-server-name needs --tls-ca");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(options.tls_cert.empty() ? "--tls-key needs --tls-cert"
                                                               : "--tls-cert needs --tls-key");
  }
  grpc::SslCredentialsOptions ssl;
  QTRAIN_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadCertificateFile("--tls-ca", options.tls_ca));
  if (!options.tls_cert.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                            ReadCertificateFile("--tls-cert", options.tls_cert));
    QTRAIN_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPrivateKeyFile("--tls-key", options.tls_key));
    QTRAIN_RETURN_IF_ERROR(CheckKeyMatchesCertificate("--tls-cert", ssl.pem_cert_chain, "--tls-key",
                                                      ssl.pem_private_key));
  }
  return grpc::SslCredentials(ssl);
}

// A few words for why a connection failed, instead of gRPC's chain of internal errors, and
// whether asking "is it running?" makes sense (not for a TLS or name problem).
struct Reason {
  std::string text;
  bool ask_running = true;
};

Reason ShortReason(absl::string_view message) {
  static constexpr absl::string_view kTls =
      "the TLS handshake failed (check --tls-ca, --tls-cert, --tls-key and --tls-server-name)";
  static constexpr struct {
    absl::string_view needle;
    absl::string_view text;
    bool ask_running;
  } kReasons[] = {
      {"connection refused", "connection refused", true},
      {"handshake", kTls, false},
      {"ssl", kTls, false},
      {"dns resolution failed", "the host name does not resolve", false},
      {"domain name not found", "the host name does not resolve", false},
      {"connection timed out", "the connection timed out", true},
      {"network is unreachable", "the network is unreachable", false},
      {"no route to host", "no route to host", false},
      {"connection reset", "the connection was reset", true},
      {"socket closed", "the connection was closed", true},
      {"broken pipe", "the connection was closed", true},
      {"goaway", "the server is shutting down", true},
  };
  const std::string lower = absl::AsciiStrToLower(message);
  for (const auto& reason : kReasons) {
    if (absl::StrContains(lower, reason.needle)) {
      return {std::string(reason.text), reason.ask_running};
    }
  }
  absl::string_view line = message.substr(0, message.find('\n'));
  if (line.empty()) return {"unavailable"};
  if (line.size() > kMaxReasonChars) return {absl::StrCat(line.substr(0, kMaxReasonChars), "...")};
  return {std::string(line)};
}

}  // namespace

absl::StatusOr<RpcClient> RpcClient::Create(const ChannelOptions& options) {
  QTRAIN_RETURN_IF_ERROR(SplitHostPort(options.address).status());
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the maximum message size must be positive, got ", options.max_message_bytes));
  }
  RpcClient client;
  client.address_ = options.address;
  if (!options.token_file.empty()) {
    // The message names the file; the caller knows which flag gave it.
    QTRAIN_ASSIGN_OR_RETURN(client.token_, ReadTokenFile(options.token_file));
  }
  QTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                          MakeCredentials(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  // Pings on open calls (a Heartbeat or Watch stream) notice a coordinator whose machine
  // vanished; the server permits one every 10 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  // No bandwidth-delay probing: it sends a PING with each burst of data, and the service's
  // messages are small (a heartbeat a second); the default flow-control window suffices.
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  client.channel_ = grpc::CreateCustomChannel(options.address, credentials, args);
  client.last_timeout_ = std::make_shared<std::atomic<int64_t>>(-1);
  return client;
}

std::unique_ptr<grpc::ClientContext> RpcClient::NewContext(absl::Duration timeout) const {
  auto context = NewStreamContext();
  // An infinite (or absurdly long) timeout means no deadline rather than an overflow.
  if (timeout < kLongestDeadline) {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(std::max(timeout, absl::ZeroDuration())));
  }
  if (last_timeout_ != nullptr) last_timeout_->store(absl::ToInt64Milliseconds(timeout));
  return context;
}

std::unique_ptr<grpc::ClientContext> RpcClient::NewStreamContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  // Metadata rather than call credentials: gRPC sends call credentials only over TLS, and
  // tokens are also used on plaintext (e.g. a private network without TLS).
  if (!token_.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token_));
  return context;
}

absl::Status RpcClient::Describe(const grpc::Status& status, std::string_view what) const {
  const int64_t ms = last_timeout_ != nullptr ? last_timeout_->load() : -1;
  return Describe(status, what, ms >= 0 ? absl::Milliseconds(ms) : absl::InfiniteDuration());
}

absl::Status RpcClient::Describe(const grpc::Status& status, std::string_view what,
                                 absl::Duration timeout) const {
  if (status.ok()) return absl::OkStatus();
  const std::string& message = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE: {
      const Reason reason = ShortReason(message);
      return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", address_, ": ",
                                                 reason.text,
                                                 reason.ask_running ? "; is it running?" : ""));
    }
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(absl::StrCat(
          "cannot reach the coordinator at ", address_, ": ", Av(what), " did not answer",
          timeout == absl::InfiniteDuration()
              ? std::string(" in time")
              : absl::StrCat(" within ", absl::FormatDuration(timeout))));
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::UnauthenticatedError(
          token_.empty()
              ? absl::StrCat("the coordinator at ", address_,
                             " refused a call without a token: ", message, " (give a token file)")
              : absl::StrCat("the coordinator at ", address_, " refused the token: ", message));
    default: {
      const absl::Status converted = FromGrpcStatus(status);
      return absl::Status(converted.code(), absl::StrCat(Av(what), ": ", converted.message()));
    }
  }
}

}  // namespace qtrain
