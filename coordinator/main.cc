// qtrain-coordinator: schedules jobs onto workers and keeps the service's durable state.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/metrics_server.h"
#include "common/rpc_server.h"
#include "common/signal_pipe.h"
#include "common/status_macros.h"
#include "coordinator/server.h"

namespace {

struct Flags {
  std::string listen = "127.0.0.1:7070";
  std::string address_file;
  std::string state_dir;
  std::string run_root;
  double lease_seconds = 10;
  double settle_seconds = 1;
  std::string auth_token_file, cluster_token_file, tls_cert, tls_key, tls_client_ca;
  int64_t max_message_bytes = 16 << 20;
  std::string log_level = "INFO";
  std::string metrics_listen, metrics_address_file;
};

// The metrics flags are checked with the others, before anything starts (exit 2).
absl::Status CheckMetricsFlags(const Flags& flags) {
  if (flags.metrics_listen.empty()) {
    if (!flags.metrics_address_file.empty()) {
      return absl::InvalidArgumentError("--metrics-address-file needs --metrics-listen");
    }
    return absl::OkStatus();
  }
  return qtrain::CheckMetricsListen(flags.metrics_listen, "--metrics-listen");
}

absl::Status CheckSeconds(double value, const char* flag, bool zero_ok) {
  if (!std::isfinite(value) || value < 0 || (!zero_ok && value == 0) || value > 86400 * 365) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": must be ", zero_ok ? ">= 0" : "> 0", " seconds (got ", value, ")"));
  }
  return absl::OkStatus();
}

absl::Status Run(const Flags& flags, qtrain::SignalPipe& signals) {
  QTRAIN_RETURN_IF_ERROR(CheckSeconds(flags.lease_seconds, "--lease-seconds", false));
  QTRAIN_RETURN_IF_ERROR(CheckSeconds(flags.settle_seconds, "--settle-seconds", true));
  if (flags.max_message_bytes < 1024 || flags.max_message_bytes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes: must be in [1024, 2^30] (got ", flags.max_message_bytes, ")"));
  }
  qtrain::coordinator::CoordinatorServerOptions options;
  options.state_dir = flags.state_dir;
  options.run_root = flags.run_root;
  options.lease = absl::Seconds(flags.lease_seconds);
  options.settle = absl::Seconds(flags.settle_seconds);
  options.rpc.listen = flags.listen;
  options.rpc.max_receive_message_bytes = static_cast<int>(flags.max_message_bytes);
  options.rpc.security.auth_token_file = flags.auth_token_file;
  options.rpc.security.cluster_token_file = flags.cluster_token_file;
  options.rpc.security.tls_cert = flags.tls_cert;
  options.rpc.security.tls_key = flags.tls_key;
  options.rpc.security.tls_client_ca = flags.tls_client_ca;
  options.metrics_listen = flags.metrics_listen;
  QTRAIN_ASSIGN_OR_RETURN(auto server, qtrain::coordinator::CoordinatorServer::Start(options));
  if (!server->metrics_address().empty()) {
    QTRAIN_LOG(INFO) << "metrics on http://" << server->metrics_address() << "/metrics";
    if (!flags.metrics_address_file.empty()) {
      QTRAIN_RETURN_IF_ERROR(
          qtrain::WriteAddressFile(flags.metrics_address_file, server->metrics_address()));
    }
  }
  if (!flags.address_file.empty()) {
    QTRAIN_RETURN_IF_ERROR(qtrain::WriteAddressFile(flags.address_file, server->address()));
  }
  QTRAIN_LOG(INFO) << "coordinator ready on " << server->address() << " (state " << flags.state_dir
                   << ", runs " << flags.run_root << ")";
  const int received = signals.Wait(absl::InfiniteDuration()).value_or(0);
  QTRAIN_LOG(INFO) << "signal " << received << ": stopping";
  server->Shutdown();
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  // absl's deadlock detector (on in builds without NDEBUG) walks a lock graph on every lock:
  // measurable CPU at a thousand heartbeats a second. The lock order is fixed by design.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::StatusOr<std::unique_ptr<qtrain::SignalPipe>> signals = qtrain::SignalPipe::Install();
  if (!signals.ok()) {
    std::fprintf(stderr, "qtrain-coordinator: %s\n",
                 std::string(signals.status().message()).c_str());
    return 1;
  }

  CLI::App app{"qtrain-coordinator: schedules qtrain jobs onto workers"};
  Flags flags;
  app.add_option("--listen", flags.listen, "HOST:PORT to serve on (port 0 picks one)")
      ->capture_default_str();
  app.add_option("--address-file", flags.address_file,
                 "Write HOST:PORT here once serving (atomically)");
  app.add_option("--state-dir", flags.state_dir, "Directory of coordinator.db")->required();
  app.add_option("--run-root", flags.run_root, "Jobs' run directories: <run-root>/<ID>")
      ->required();
  app.add_option("--lease-seconds", flags.lease_seconds,
                 "A worker silent this long is LOST (decimals allowed)")
      ->capture_default_str();
  app.add_option("--settle-seconds", flags.settle_seconds,
                 "Wait this long for more workers when between min and max")
      ->capture_default_str();
  app.add_option("--auth-token-file", flags.auth_token_file, "Bearer token users must send");
  app.add_option("--cluster-token-file", flags.cluster_token_file,
                 "Bearer token workers must send");
  app.add_option("--tls-cert", flags.tls_cert, "PEM server certificate (serve TLS)");
  app.add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", flags.tls_client_ca, "PEM CA: require client certificates");
  app.add_option("--max-message-bytes", flags.max_message_bytes, "Largest request accepted")
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "DEBUG, INFO, WARNING or ERROR")
      ->capture_default_str();
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "HOST:PORT to serve Prometheus metrics on, at /metrics (port 0 picks one; "
                 "default: off)");
  app.add_option("--metrics-address-file", flags.metrics_address_file,
                 "Write the metrics HOST:PORT here once serving (atomically)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  qtrain::LogLevel level;
  if (!qtrain::ParseLogLevel(flags.log_level, &level)) {
    std::fprintf(stderr, "qtrain-coordinator: --log-level: unknown level '%s'\n",
                 flags.log_level.c_str());
    return 2;
  }
  qtrain::SetMinLogLevel(level);
  if (absl::Status s = CheckMetricsFlags(flags); !s.ok()) {
    std::fprintf(stderr, "qtrain-coordinator: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  absl::Status status;
  try {
    status = Run(flags, **signals);
  } catch (const std::exception& e) {
    status = absl::InternalError(std::string("unexpected error: ") + e.what());
  }
  if (!status.ok()) {
    std::fprintf(stderr, "qtrain-coordinator: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
