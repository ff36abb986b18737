// Prometheus metrics of a gRPC server's calls, recorded by a server interceptor (it sees every
// finished RPC, token refusals included, on the sync and callback APIs alike):
//
//   qtrain_rpc_total{method, code}  counter: finished RPCs by gRPC status code name
//   qtrain_rpc_seconds{method}      histogram: handler latency of unary RPCs
//
// `method` is "qtrain.v1.JobService/CreateJob" for the methods of the server's services (found
// in the generated descriptor pool, which also says whether a method is unary) and "unknown"
// for anything else, so a client cannot grow the label set.
//
//   auto metrics = std::make_shared<RpcMetrics>(registry);
//   builder.experimental().SetInterceptorCreators(... metrics->InterceptorFactory() ...);
//   ... after BuildAndStart ...
//   metrics->SetServices(service_names);
#ifndef QTRAIN_COMMON_RPC_METRICS_H_
#define QTRAIN_COMMON_RPC_METRICS_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace qtrain {

class RpcMetrics : public std::enable_shared_from_this<RpcMetrics> {
 public:
  // Registers both families on `registry`.
  explicit RpcMetrics(std::shared_ptr<prometheus::Registry> registry);
  RpcMetrics(const RpcMetrics&) = delete;
  RpcMetrics& operator=(const RpcMetrics&) = delete;

  // The services ("qtrain.v1.JobService", ...) whose methods get their own label; names the
  // descriptor pool does not know are skipped (their calls count as "unknown").
  void SetServices(const std::vector<std::string>& services);

  struct Method {
    std::string label;  // "qtrain.v1.JobService/CreateJob" or "unknown"
    bool unary = false;
  };
  // `path` is gRPC's "/package.Service/Method" (null for a call no service handles).
  Method Classify(const char* path) const;

  // One finished RPC; `handler_time` is observed for unary methods.
  void Record(const Method& method, grpc::StatusCode code, absl::Duration handler_time);

  // A factory for ServerBuilder::experimental().SetInterceptorCreators; it keeps this alive.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& total_;
  prometheus::Family<prometheus::Histogram>& seconds_;
  mutable absl::Mutex mu_;
  std::map<std::string, Method, std::less<>> methods_ ABSL_GUARDED_BY(mu_);  // by path
  // Family::Add builds a metric before looking it up: these keep one lookup per series.
  std::map<std::pair<std::string, int>, prometheus::Counter*> counters_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, prometheus::Histogram*> histograms_ ABSL_GUARDED_BY(mu_);
};

// "OK", "NOT_FOUND", ...; "UNKNOWN" for a number outside gRPC's codes.
std::string GrpcCodeName(int code);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RPC_METRICS_H_
