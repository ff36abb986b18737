// The global flags of the remote commands: where the coordinator is, how to authenticate, and
// the deadline of each call. Given before or after the subcommand.
#ifndef QTRAIN_CLI_REMOTE_FLAGS_H_
#define QTRAIN_CLI_REMOTE_FLAGS_H_

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "cli/job_client.h"

namespace qtrain::cli {

struct RemoteFlags {
  std::string coordinator;      // else $QTRAIN_COORDINATOR, else 127.0.0.1:7070
  std::string auth_token_file;  // else $QTRAIN_AUTH_TOKEN_FILE
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  double timeout_seconds = 10;
};

// Adds the flags to the top-level app (subcommands that fall through accept them too).
void AddRemoteFlags(CLI::App& app, RemoteFlags* flags);

// The coordinator address after the environment fallbacks.
std::string CoordinatorAddress(const RemoteFlags& flags);

absl::StatusOr<JobClient> ConnectFromFlags(const RemoteFlags& flags);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_REMOTE_FLAGS_H_
