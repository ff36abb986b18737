// qtrain-worker: the worker daemon, and (`train-stage`) the training child it spawns.
//
// Test hook: QTRAIN_TEST_STEP_DELAY_MS=N in the environment makes the training child sleep N ms
// after every optimizer step, so that tests can act while a stage is running.
#include <signal.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/metrics_server.h"
#include "common/rpc_server.h"
#include "common/signal_pipe.h"
#include "worker/daemon/daemon.h"
#include "worker/daemon/group_connect.h"
#include "worker/daemon/peer_host.h"
#include "worker/daemon/stage_child.h"
#include "worker/daemon/worker_metrics.h"

#ifndef QTRAIN_VERSION
#define QTRAIN_VERSION "0.0.0"
#endif

namespace {

constexpr int kMaxThreads = 4096;
constexpr size_t kMaxNameBytes = 100;
constexpr double kMaxDrainSeconds = 1e7;
constexpr int64_t kMaxParentTimeoutMs = int64_t{24} * 3600 * 1000;
constexpr double kMaxCollectiveSeconds = 86400;
constexpr int64_t kMaxCollectiveMs = int64_t{24} * 3600 * 1000;

struct DaemonFlags {
  std::string coordinator;
  std::string work_dir;
  std::string device = "cpu";
  std::string name;
  int threads = 0;
  std::string cluster_token_file, tls_ca, tls_cert, tls_key, tls_server_name;
  double drain_timeout_seconds = 300;
  std::string peer_host;
  double collective_timeout_seconds = 300;
  std::string metrics_listen, metrics_address_file;
  std::optional<double> peak_flops;
};

struct StageFlags {
  std::string assignment;
  int threads = 0;
  int64_t parent_timeout_ms = 5000;
  // The group's rendezvous (world_size > 1).
  std::string coordinator, cluster_token_file, tls_ca, tls_cert, tls_key, tls_server_name;
  std::string worker;
  std::string peer_host = "127.0.0.1";
  int64_t collective_timeout_ms = 300 * 1000;
};

// Runs the daemon until a signal (or Stop) ends it: the first SIGTERM/SIGINT drains, a second
// one aborts the child. The signals' handler only writes to a pipe (SignalPipe) that this
// thread reads, so none of the daemon's work runs inside a handler.
int RunDaemon(const DaemonFlags& flags) {
  qtrain::worker::DaemonOptions options;
  options.channel.address = flags.coordinator;
  options.channel.token_file = flags.cluster_token_file;
  options.channel.tls_ca = flags.tls_ca;
  options.channel.tls_cert = flags.tls_cert;
  options.channel.tls_key = flags.tls_key;
  options.channel.tls_server_name = flags.tls_server_name;
  options.work_dir = flags.work_dir;
  options.device =
      flags.device == "cuda" ? qtrain::v1::DEVICE_KIND_CUDA : qtrain::v1::DEVICE_KIND_CPU;
  options.name = flags.name;
  options.threads = flags.threads;
  options.drain_timeout = absl::Seconds(flags.drain_timeout_seconds);
  options.peer_host = flags.peer_host;
  options.collective_timeout = absl::Seconds(flags.collective_timeout_seconds);
  options.version = QTRAIN_VERSION;
  options.peak_flops = flags.peak_flops;

  // Installed before any thread of ours starts; see signal_pipe.h for why not a blocked mask.
  absl::StatusOr<std::unique_ptr<qtrain::SignalPipe>> signals = qtrain::SignalPipe::Install();
  if (!signals.ok()) {
    std::fprintf(stderr, "qtrain-worker: %s\n", std::string(signals.status().message()).c_str());
    return 1;
  }

  // Listening before the daemon starts (a taken port fails before anything else happens); the
  // address is published once the daemon has added its series, so the first scrape of a reader
  // of --metrics-address-file already sees qtrain_worker_up (0 until registered).
  std::unique_ptr<qtrain::MetricsServer> metrics_server;
  if (!flags.metrics_listen.empty()) {
    options.metrics = std::make_shared<prometheus::Registry>();
    absl::StatusOr<std::unique_ptr<qtrain::MetricsServer>> server =
        qtrain::MetricsServer::Start({.listen = flags.metrics_listen}, options.metrics);
    if (!server.ok()) {
      std::fprintf(stderr, "qtrain-worker: %s\n", std::string(server.status().message()).c_str());
      return 1;
    }
    metrics_server = *std::move(server);
  }

  absl::StatusOr<std::unique_ptr<qtrain::worker::WorkerDaemon>> daemon =
      qtrain::worker::WorkerDaemon::Start(options);
  if (!daemon.ok()) {
    std::fprintf(stderr, "qtrain-worker: %s\n", std::string(daemon.status().message()).c_str());
    return 1;
  }
  if (metrics_server != nullptr) {
    // Logged before the address file appears: a reader of the file finds the line in the log.
    QTRAIN_LOG(INFO) << "metrics on http://" << metrics_server->address() << "/metrics";
    if (!flags.metrics_address_file.empty()) {
      if (absl::Status written =
              qtrain::WriteAddressFile(flags.metrics_address_file, metrics_server->address());
          !written.ok()) {
        std::fprintf(stderr, "qtrain-worker: --metrics-address-file: %s\n",
                     std::string(written.message()).c_str());
        return 1;
      }
    }
  }

  int received = 0;
  while (!(*daemon)->done()) {
    const std::optional<int> sig = (*signals)->Wait(absl::Milliseconds(200));
    if (!sig) continue;
    if (++received == 1) {
      QTRAIN_LOG(INFO) << "signal " << *sig << ": draining, then exiting (again to abort now)";
      (*daemon)->Drain(/*exit_when_drained=*/true);
    } else if (received == 2) {
      QTRAIN_LOG(INFO) << "signal " << *sig << " again: aborting the training child and exiting";
      (*daemon)->Stop();
    }
  }
  const absl::Status status = (*daemon)->Wait();
  if (!status.ok()) {
    std::fprintf(stderr, "qtrain-worker: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

int RunTrainStage(const StageFlags& flags) {
  qtrain::worker::StageChildOptions options;
  options.assignment_path = flags.assignment;
  options.threads = flags.threads;
  options.parent_timeout = absl::Milliseconds(flags.parent_timeout_ms);
  options.coordinator.address = flags.coordinator;
  options.coordinator.token_file = flags.cluster_token_file;
  options.coordinator.tls_ca = flags.tls_ca;
  options.coordinator.tls_cert = flags.tls_cert;
  options.coordinator.tls_key = flags.tls_key;
  options.coordinator.tls_server_name = flags.tls_server_name;
  options.worker = flags.worker;
  options.peer_host = flags.peer_host;
  options.collective_timeout = absl::Milliseconds(flags.collective_timeout_ms);
  options.connect_group = qtrain::worker::ConnectGlooGroup;
  options.connect_device_group = qtrain::worker::ConnectNcclGroup;
  return qtrain::worker::RunStageChild(options);
}

}  // namespace

int main(int argc, char** argv) {
  // Writes to a closed pipe are errors to handle, not a silent death.
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "qtrain-worker: a qtrain worker daemon; it registers with the coordinator and "
      "trains what it is assigned"};
  app.set_version_flag("--version", std::string("qtrain-worker ") + QTRAIN_VERSION);
  app.require_subcommand(0, 1);

  DaemonFlags daemon;
  if (const char* env = std::getenv("QTRAIN_COORDINATOR"); env != nullptr) {
    daemon.coordinator = env;
  }
  std::string log_level = "INFO";
  app.add_option("--coordinator", daemon.coordinator,
                 "the coordinator's HOST:PORT (default: $QTRAIN_COORDINATOR)");
  app.add_option("--work-dir", daemon.work_dir,
                 "the worker's directory (its id, lock and assignment files)");
  app.add_option("--device", daemon.device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--name", daemon.name, "the worker's name (default: the hostname)");
  app.add_option("--threads", daemon.threads, "CPU threads for training (0: all)")
      ->check(CLI::Range(0, kMaxThreads))
      ->capture_default_str();
  app.add_option("--cluster-token-file", daemon.cluster_token_file,
                 "file with the cluster token sent to the coordinator")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-ca", daemon.tls_ca, "PEM of the CA of the coordinator's certificate")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", daemon.tls_cert, "PEM client certificate (mTLS)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", daemon.tls_key, "PEM client key (mTLS)")->check(CLI::ExistingFile);
  app.add_option("--tls-server-name", daemon.tls_server_name,
                 "the name to check in the coordinator's certificate");
  app.add_option("--drain-timeout-seconds", daemon.drain_timeout_seconds,
                 "on SIGTERM, how long the current assignment may run to its next checkpoint")
      ->check(CLI::Range(0.0, kMaxDrainSeconds))
      ->capture_default_str();
  CLI::Option* peer_host_option =
      app.add_option("--peer-host", daemon.peer_host,
                     "the address this worker's collectives listen on, told to its peers (default: "
                     "the hostname)");
  app.add_option("--collective-timeout-seconds", daemon.collective_timeout_seconds,
                 "a collective (or a group's rendezvous) not done within this fails the round")
      ->check(CLI::Range(0.001, kMaxCollectiveSeconds))
      ->capture_default_str();
  CLI::Option* metrics_listen_option = app.add_option(
      "--metrics-listen", daemon.metrics_listen,
      "HOST:PORT to serve Prometheus metrics on at /metrics (port 0 picks one; default: off)");
  app.add_option("--metrics-address-file", daemon.metrics_address_file,
                 "after binding, write the metrics HOST:PORT to this file");
  double peak_flops = 0;
  CLI::Option* peak_flops_option =
      app.add_option("--peak-flops", peak_flops,
                     "the device's peak FLOP/s at the training precision, for "
                     "qtrain_model_flops_utilization (default: known GPUs; none on a CPU)");
  app.add_option("--log-level", log_level, "DEBUG, INFO, WARNING or ERROR")->capture_default_str();

  StageFlags stage;
  CLI::App* train_stage = app.add_subcommand(
      "train-stage", "the training child the daemon spawns for an assignment (not for users)");
  train_stage->add_option("--assignment", stage.assignment, "the assignment (proto JSON)")
      ->required();
  train_stage->add_option("--threads", stage.threads, "CPU threads (0: all)")
      ->check(CLI::Range(0, kMaxThreads));
  train_stage
      ->add_option("--parent-timeout-ms", stage.parent_timeout_ms,
                   "stop when the daemon is silent this long")
      ->check(CLI::Range(int64_t{1}, kMaxParentTimeoutMs));
  train_stage->add_option("--coordinator", stage.coordinator,
                          "the coordinator's HOST:PORT (the group's rendezvous)");
  train_stage->add_option("--cluster-token-file", stage.cluster_token_file, "the cluster token")
      ->check(CLI::ExistingFile);
  train_stage->add_option("--tls-ca", stage.tls_ca, "PEM of the coordinator's CA")
      ->check(CLI::ExistingFile);
  train_stage->add_option("--tls-cert", stage.tls_cert, "PEM client certificate")
      ->check(CLI::ExistingFile);
  train_stage->add_option("--tls-key", stage.tls_key, "PEM client key")->check(CLI::ExistingFile);
  train_stage->add_option("--tls-server-name", stage.tls_server_name,
                          "the name to check in the coordinator's certificate");
  train_stage->add_option("--worker", stage.worker, "this worker's name (workers/ID)");
  train_stage->add_option("--peer-host", stage.peer_host, "the address collectives listen on")
      ->capture_default_str();
  train_stage
      ->add_option("--collective-timeout-ms", stage.collective_timeout_ms,
                   "a collective not done within this fails")
      ->check(CLI::Range(int64_t{1}, kMaxCollectiveMs))
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  qtrain::LogLevel level;
  if (!qtrain::ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "qtrain-worker: --log-level: unknown level '%s'\n", log_level.c_str());
    return 2;
  }
  qtrain::SetMinLogLevel(level);

  try {
    if (train_stage->parsed()) return RunTrainStage(stage);
    if (daemon.coordinator.empty()) {
      std::fprintf(stderr,
                   "qtrain-worker: --coordinator HOST:PORT is required (or set "
                   "QTRAIN_COORDINATOR)\n");
      return 2;
    }
    if (daemon.work_dir.empty()) {
      std::fprintf(stderr, "qtrain-worker: --work-dir DIR is required\n");
      return 2;
    }
    if (!daemon.name.empty() && (daemon.name.size() > kMaxNameBytes ||
                                 std::none_of(daemon.name.begin(), daemon.name.end(),
                                              [](unsigned char c) { return std::isalnum(c); }))) {
      std::fprintf(stderr,
                   "qtrain-worker: --name: '%s' cannot name a worker (give up to %zu characters "
                   "with letters or digits)\n",
                   daemon.name.substr(0, kMaxNameBytes).c_str(), kMaxNameBytes);
      return 2;
    }
    if (!(daemon.collective_timeout_seconds > 0)) {  // NaN passes the range check
      std::fprintf(stderr,
                   "qtrain-worker: --collective-timeout-seconds: not a number of seconds\n");
      return 2;
    }
    if (peer_host_option->count() > 0) {  // given, even if empty
      if (std::optional<std::string> problem = qtrain::worker::PeerHostProblem(daemon.peer_host)) {
        std::fprintf(stderr, "qtrain-worker: --peer-host: %s\n", problem->c_str());
        return 2;
      }
    }
    if (!(daemon.drain_timeout_seconds >= 0)) {  // NaN passes the range check
      std::fprintf(stderr, "qtrain-worker: --drain-timeout-seconds: not a number of seconds\n");
      return 2;
    }
    if (metrics_listen_option->count() > 0) {  // given, even if empty
      if (absl::Status bad = qtrain::CheckMetricsListen(daemon.metrics_listen, "--metrics-listen");
          !bad.ok()) {
        std::fprintf(stderr, "qtrain-worker: %s\n", std::string(bad.message()).c_str());
        return 2;
      }
    }
    if (!daemon.metrics_address_file.empty() && daemon.metrics_listen.empty()) {
      std::fprintf(stderr, "qtrain-worker: --metrics-address-file needs --metrics-listen\n");
      return 2;
    }
    if (peak_flops_option->count() > 0) {
      if (std::optional<std::string> problem = qtrain::worker::PeakFlopsProblem(peak_flops)) {
        std::fprintf(stderr, "qtrain-worker: --peak-flops: %s\n", problem->c_str());
        return 2;
      }
      daemon.peak_flops = peak_flops;
    }
    return RunDaemon(daemon);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qtrain-worker: unexpected error: %s\n", e.what());
    return 1;
  }
}
