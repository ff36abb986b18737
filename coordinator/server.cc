#include "coordinator/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/shard_plan.h"

namespace qtrain::coordinator {
namespace {

// flock(2) on DIR/coordinator.lock, holding our pid; the kernel drops it when we exit.
absl::StatusOr<ScopedFd> LockStateDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", dir, ": cannot create it: ", ec.message()));
  }
  const std::string path = dir + "/coordinator.lock";
  ScopedFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (fd.get() < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    std::string holder = "another process";
    char buf[32] = {};
    if (pread(fd.get(), buf, sizeof(buf) - 1, 0) > 0) {
      int64_t pid = 0;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(buf), &pid)) {
        holder = absl::StrCat("process ", pid);
      }
    }
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", dir, " is in use by another coordinator (", holder, ")"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) != 0 || pwrite(fd.get(), pid.data(), pid.size(), 0) < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorServerOptions& options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state-dir: required");
  if (!options.metrics_listen.empty()) {
    QTRAIN_RETURN_IF_ERROR(CheckMetricsListen(options.metrics_listen, "--metrics-listen"));
  }
  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer());
  QTRAIN_ASSIGN_OR_RETURN(server->lock_, LockStateDir(options.state_dir));
  // The listen address and security files are checked before the store is touched.
  ServerSecurityOptions security_options = options.rpc.security;
  security_options.listen = options.rpc.listen;
  QTRAIN_ASSIGN_OR_RETURN(ServerSecurity security, ServerSecurity::Load(security_options));
  QTRAIN_ASSIGN_OR_RETURN(server->store_, Store::Open(options.state_dir + "/coordinator.db"));
  CoordinatorOptions core;
  core.store = server->store_.get();
  core.run_root = options.run_root;
  core.lease = options.lease;
  core.settle = options.settle;
  core.plan_data = options.plan_data ? options.plan_data : DefaultDataPlanner();
  RpcServerOptions rpc = options.rpc;
  if (!options.metrics_listen.empty()) {
    server->metrics_registry_ = std::make_shared<MetricsRegistry>();
    server->metrics_ = std::make_unique<CoordinatorMetrics>(*server->metrics_registry_);
    core.metrics = server->metrics_.get();
    rpc.metrics = server->metrics_registry_;
  }
  QTRAIN_ASSIGN_OR_RETURN(server->coordinator_, Coordinator::Create(core));
  server->job_service_ = std::make_unique<JobService>(server->coordinator_.get(), security);
  server->worker_service_ = std::make_unique<WorkerService>(server->coordinator_.get(), security);
  QTRAIN_ASSIGN_OR_RETURN(
      server->rpc_,
      RpcServer::Start(rpc, {server->job_service_->service(), server->worker_service_->service()}));
  if (server->metrics_registry_ != nullptr) {
    server->state_metrics_ =
        std::make_shared<CoordinatorStateCollector>(server->coordinator_.get());
    server->metrics_registry_->AddCollectable(server->state_metrics_);
    QTRAIN_ASSIGN_OR_RETURN(
        server->metrics_server_,
        MetricsServer::Start({.listen = options.metrics_listen}, server->metrics_registry_));
  }
  server->ticker_ = std::thread([s = server.get(), tick = options.tick] {
    while (!s->stop_.WaitForNotificationWithTimeout(tick)) s->coordinator_->Tick();
  });
  server->rpc_->SetServing(true);
  return server;
}

const std::string& CoordinatorServer::metrics_address() const {
  static const std::string* const kNone = new std::string();
  return metrics_server_ != nullptr ? metrics_server_->address() : *kNone;
}

void CoordinatorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  // Scrapes read the coordinator: they stop first.
  metrics_server_.reset();
  if (rpc_) rpc_->SetServing(false);
  if (job_service_) job_service_->Shutdown();
  if (rpc_) rpc_->Shutdown(absl::Seconds(1));
  stop_.Notify();
  if (ticker_.joinable()) ticker_.join();
}

CoordinatorServer::~CoordinatorServer() {
  Shutdown();
  // The services go before the coordinator they call, the server before the services.
  metrics_server_.reset();
  rpc_.reset();
  job_service_.reset();
  worker_service_.reset();
  coordinator_.reset();
  store_.reset();
}

}  // namespace qtrain::coordinator
