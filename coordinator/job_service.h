// qtrain.v1.JobService over the coordinator (users' realm: the --auth-token-file token).
#ifndef QTRAIN_COORDINATOR_JOB_SERVICE_H_
#define QTRAIN_COORDINATOR_JOB_SERVICE_H_

#include <memory>

#include "common/rpc_security.h"
#include "coordinator/coordinator.h"
#include "grpcpp/impl/service_type.h"

namespace qtrain::coordinator {

class JobService {
 public:
  // `coordinator` must outlive the service. Starts the thread that feeds WatchJob streams.
  JobService(Coordinator* coordinator, ServerSecurity security);
  ~JobService();
  JobService(const JobService&) = delete;
  JobService& operator=(const JobService&) = delete;

  grpc::Service* service();
  // Ends every open WatchJob stream (before the server shuts down).
  void Shutdown();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_JOB_SERVICE_H_
