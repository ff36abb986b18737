#include "common/rpc_security.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tls_files.h"
#include "grpcpp/security/server_credentials.h"

namespace qtrain {
namespace {

// absl here is built with its own string_view; the headers speak std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t kMaxTokenFileBytes = 4096;
constexpr absl::string_view kAuthorizationKey = "authorization";
constexpr absl::string_view kBearerScheme = "bearer ";

absl::Status Malformed(absl::string_view host_port, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed address \"", host_port, "\": ", why, " (expected HOST:PORT)"));
}

bool IsHostNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

bool IsLoopbackIpv4(const std::string& host) {
  in_addr addr{};
  if (inet_pton(AF_INET, host.c_str(), &addr) != 1) return false;
  return (ntohl(addr.s_addr) >> 24) == 127;
}

bool IsLoopbackIpv6(const std::string& host) {
  in6_addr addr{};
  if (inet_pton(AF_INET6, host.c_str(), &addr) != 1) return false;
  if (IN6_IS_ADDR_LOOPBACK(&addr)) return true;
  // ::ffff:127.x.y.z reaches the IPv4 loopback.
  return IN6_IS_ADDR_V4MAPPED(&addr) && addr.s6_addr[12] == 127;
}

absl::StatusOr<std::optional<std::string>> ReadOptionalToken(absl::string_view flag,
                                                             const std::string& path) {
  if (path.empty()) return std::optional<std::string>();
  absl::StatusOr<std::string> token = ReadTokenFile(path);
  if (!token.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", token.status().message()));
  }
  return std::optional<std::string>(*std::move(token));
}

// The token of an "authorization: Bearer <token>" header; nullopt when there is none.
std::optional<absl::string_view> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  const auto it =
      metadata.find(grpc::string_ref(kAuthorizationKey.data(), kAuthorizationKey.size()));
  if (it == metadata.end()) return std::nullopt;
  const absl::string_view value(it->second.data(), it->second.size());
  if (value.size() < kBearerScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearerScheme.size()), kBearerScheme)) {
    return std::nullopt;
  }
  return absl::StripAsciiWhitespace(value.substr(kBearerScheme.size()));
}

}  // namespace

// Hashing first makes the loop length fixed: timing tells nothing about the expected token.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  Sha256 ha, hb;
  ha.Update(a);
  hb.Update(b);
  const std::array<uint8_t, 32> da = ha.Finish();
  const std::array<uint8_t, 32> db = hb.Finish();
  uint8_t diff = 0;
  for (size_t i = 0; i < da.size(); ++i) diff |= da[i] ^ db[i];
  return diff == 0;
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(std::string_view host_port_arg) {
  const absl::string_view host_port = Av(host_port_arg);
  std::string host;
  absl::string_view port_text;
  if (absl::StartsWith(host_port, "[")) {
    const size_t close = host_port.find(']');
    if (close == absl::string_view::npos) return Malformed(host_port, "no closing ']'");
    host = std::string(host_port.substr(1, close - 1));
    const absl::string_view rest = host_port.substr(close + 1);
    if (!absl::StartsWith(rest, ":")) return Malformed(host_port, "no port after ']'");
    port_text = rest.substr(1);
    in6_addr addr{};
    if (inet_pton(AF_INET6, host.c_str(), &addr) != 1) {
      return Malformed(host_port, "not an IPv6 address inside [ ]");
    }
  } else {
    const size_t colon = host_port.rfind(':');
    if (colon == absl::string_view::npos) return Malformed(host_port, "no port");
    host = std::string(host_port.substr(0, colon));
    port_text = host_port.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return Malformed(host_port, "an IPv6 host needs brackets, e.g. [::1]:7070");
    }
    for (char c : host) {
      if (!IsHostNameChar(c)) return Malformed(host_port, "the host has an invalid character");
    }
  }
  if (host.empty()) return Malformed(host_port, "empty host");
  if (port_text.empty()) return Malformed(host_port, "no port");
  for (char c : port_text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return Malformed(host_port, "the port is not a number");
    }
  }
  int port = 0;
  if (port_text.size() > 5 || !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return Malformed(host_port, "the port is not in [0, 65535]");
  }
  return std::make_pair(std::move(host), port);
}

std::string JoinHostPort(std::string_view host, int port) {
  if (host.find(':') != std::string_view::npos) return absl::StrCat("[", Av(host), "]:", port);
  return absl::StrCat(Av(host), ":", port);
}

bool IsLoopbackAddress(std::string_view host_port) {
  absl::StatusOr<std::pair<std::string, int>> split = SplitHostPort(host_port);
  if (!split.ok()) return false;
  const std::string& host = split->first;
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  return IsLoopbackIpv4(host) || IsLoopbackIpv6(host);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> content = ReadFileToString(path, kMaxTokenFileBytes);
  if (!content.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the token file: ", content.status().message()));
  }
  const absl::string_view token = absl::StripAsciiWhitespace(*content);
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the token file ", path, " is empty"));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("the token in ", path, " has a character that is not printable ASCII (at ",
                       "offset ", i, " of the token); use letters, digits and punctuation"));
    }
  }
  return std::string(token);
}

absl::StatusOr<ServerSecurity> ServerSecurity::Load(const ServerSecurityOptions& options) {
  // A malformed address is reported as such rather than as "not loopback".
  QTRAIN_RETURN_IF_ERROR(SplitHostPort(options.listen).status());
  ServerSecurity security;
  QTRAIN_ASSIGN_OR_RETURN(security.user_token_,
                          ReadOptionalToken("--auth-token-file", options.auth_token_file));
  QTRAIN_ASSIGN_OR_RETURN(security.cluster_token_,
                          ReadOptionalToken("--cluster-token-file", options.cluster_token_file));
  if (!IsLoopbackAddress(options.listen) &&
      (!security.user_token_.has_value() || !security.cluster_token_.has_value())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "listening on ", options.listen,
        " (not a loopback address) needs both --auth-token-file (users) and "
        "--cluster-token-file (workers); missing: ",
        !security.user_token_.has_value() && !security.cluster_token_.has_value()
            ? "both"
            : (!security.user_token_.has_value() ? "--auth-token-file" : "--cluster-token-file"),
        "; or listen on a loopback address such as 127.0.0.1"));
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError(options.tls_cert.empty() ? "--tls-key needs --tls-cert"
                                                               : "--tls-cert needs --tls-key");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)");
  }
  if (!options.tls_cert.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(security.cert_pem_,
                            ReadCertificateFile("--tls-cert", options.tls_cert));
    QTRAIN_ASSIGN_OR_RETURN(security.key_pem_, ReadPrivateKeyFile("--tls-key", options.tls_key));
    QTRAIN_RETURN_IF_ERROR(CheckKeyMatchesCertificate("--tls-cert", security.cert_pem_, "--tls-key",
                                                      security.key_pem_));
  }
  if (!options.tls_client_ca.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(security.client_ca_pem_,
                            ReadCertificateFile("--tls-client-ca", options.tls_client_ca));
  }
  return security;
}

std::shared_ptr<grpc::ServerCredentials> ServerSecurity::credentials() const {
  if (!tls()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(
      client_ca_pem_.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                             : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = client_ca_pem_;
  ssl.pem_key_cert_pairs.push_back({key_pem_, cert_pem_});
  return grpc::SslServerCredentials(ssl);
}

grpc::Status ServerSecurity::Check(const grpc::ServerContextBase& context, Realm realm) const {
  const std::optional<std::string>* expected[2] = {nullptr, nullptr};
  switch (realm) {
    case Realm::kUser:
      expected[0] = &user_token_;
      break;
    case Realm::kCluster:
      expected[0] = &cluster_token_;
      break;
    case Realm::kEither:
      expected[0] = &user_token_;
      expected[1] = &cluster_token_;
      break;
  }
  bool needed = false;
  for (const auto* token : expected) needed |= token != nullptr && token->has_value();
  if (!needed) return grpc::Status::OK;

  const std::optional<absl::string_view> given = BearerToken(context);
  if (!given.has_value() || given->empty()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing bearer token");
  }
  // Both candidates are compared, so a kEither call takes the same time whichever matches.
  bool match = false;
  for (const auto* token : expected) {
    if (token != nullptr && token->has_value())
      match |= ConstantTimeEquals(std::string_view(given->data(), given->size()), **token);
  }
  if (!match) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  return grpc::Status::OK;
}

}  // namespace qtrain
