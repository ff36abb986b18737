#include "cli/remote_flags.h"

#include <cmath>
#include <cstdlib>

#include "absl/time/time.h"

namespace qtrain::cli {
namespace {

std::string FromEnvironment(const std::string& value, const char* name, const char* fallback) {
  if (!value.empty()) return value;
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(fallback);
}

}  // namespace

void AddRemoteFlags(CLI::App& app, RemoteFlags* flags) {
  const std::string group = "Coordinator connection (remote commands)";
  app.add_option("--coordinator", flags->coordinator,
                 "HOST:PORT of the coordinator (default: $QTRAIN_COORDINATOR, else 127.0.0.1:7070)")
      ->group(group);
  app.add_option("--auth-token-file", flags->auth_token_file,
                 "File with the bearer token (default: $QTRAIN_AUTH_TOKEN_FILE)")
      ->group(group);
  app.add_option("--tls-ca", flags->tls_ca, "PEM of the CA of the coordinator's certificate: TLS")
      ->group(group);
  app.add_option("--tls-cert", flags->tls_cert, "PEM client certificate (mTLS)")->group(group);
  app.add_option("--tls-key", flags->tls_key, "PEM key of the client certificate")->group(group);
  app.add_option("--tls-server-name", flags->tls_server_name,
                 "The name to check in the coordinator's certificate")
      ->group(group);
  app.add_option("--timeout", flags->timeout_seconds, "Deadline of each call, in seconds")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str()
      ->group(group);
}

std::string CoordinatorAddress(const RemoteFlags& flags) {
  return FromEnvironment(flags.coordinator, "QTRAIN_COORDINATOR", "127.0.0.1:7070");
}

absl::StatusOr<JobClient> ConnectFromFlags(const RemoteFlags& flags) {
  ChannelOptions options;
  options.address = CoordinatorAddress(flags);
  options.token_file = FromEnvironment(flags.auth_token_file, "QTRAIN_AUTH_TOKEN_FILE", "");
  options.tls_ca = flags.tls_ca;
  options.tls_cert = flags.tls_cert;
  options.tls_key = flags.tls_key;
  options.tls_server_name = flags.tls_server_name;
  return JobClient::Connect(options,
                            absl::Milliseconds(std::llround(flags.timeout_seconds * 1000)));
}

}  // namespace qtrain::cli
