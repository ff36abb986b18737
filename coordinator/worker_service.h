// qtrain.v1.WorkerService over the coordinator (the cluster realm: --cluster-token-file).
#ifndef QTRAIN_COORDINATOR_WORKER_SERVICE_H_
#define QTRAIN_COORDINATOR_WORKER_SERVICE_H_

#include <memory>

#include "common/rpc_security.h"
#include "coordinator/coordinator.h"
#include "grpcpp/impl/service_type.h"

namespace qtrain::coordinator {

class WorkerService {
 public:
  WorkerService(Coordinator* coordinator, ServerSecurity security);
  ~WorkerService();
  WorkerService(const WorkerService&) = delete;
  WorkerService& operator=(const WorkerService&) = delete;

  grpc::Service* service();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_WORKER_SERVICE_H_
