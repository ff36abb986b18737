// The whole coordinator process minus flags and signals: the state-dir lock, the store, the
// state machine, the gRPC services and the timer that drives leases and the scheduler.
//
//   QTRAIN_ASSIGN_OR_RETURN(auto server, CoordinatorServer::Start(options));
//   ... server->address() ...
//   server->Shutdown();
#ifndef QTRAIN_COORDINATOR_SERVER_H_
#define QTRAIN_COORDINATOR_SERVER_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/metrics_registry.h"
#include "common/metrics_server.h"
#include "common/rpc_server.h"
#include "coordinator/coordinator.h"
#include "coordinator/job_service.h"
#include "coordinator/metrics.h"
#include "coordinator/store.h"
#include "coordinator/worker_service.h"

namespace qtrain::coordinator {

struct CoordinatorServerOptions {
  std::string state_dir;  // coordinator.db and coordinator.lock
  std::string run_root;
  absl::Duration lease = absl::Seconds(10);
  absl::Duration settle = absl::Seconds(1);
  RpcServerOptions rpc;
  // How often leases, the scheduler and rendezvous deadlines are checked.
  absl::Duration tick = absl::Milliseconds(100);
  DataPlanner plan_data;  // default: train::PlanShardAssignment
  // HOST:PORT of the Prometheus endpoint (GET /metrics; port 0 picks one); empty: none.
  std::string metrics_listen;
};

class CoordinatorServer {
 public:
  // Takes the state dir's lock (FAILED_PRECONDITION naming the holder's pid when another
  // coordinator has it), loads the store, then serves; health is SERVING once it returns.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorServerOptions& options);
  ~CoordinatorServer();  // Shutdown()

  const std::string& address() const { return rpc_->address(); }
  // HOST:PORT of /metrics as bound; empty without metrics_listen.
  const std::string& metrics_address() const;
  Coordinator* coordinator() { return coordinator_.get(); }
  // Stops serving (open streams end, workers reconnect elsewhere) and the timer. Idempotent.
  void Shutdown();

 private:
  CoordinatorServer() = default;
  ScopedFd lock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<JobService> job_service_;
  std::unique_ptr<WorkerService> worker_service_;
  std::unique_ptr<RpcServer> rpc_;
  // Metrics (all null without metrics_listen): the registry, the counters the coordinator
  // increments, the state collector over it and the HTTP endpoint.
  std::shared_ptr<MetricsRegistry> metrics_registry_;
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::shared_ptr<CoordinatorStateCollector> state_metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  absl::Notification stop_;
  std::thread ticker_;
  bool shut_down_ = false;
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_SERVER_H_
