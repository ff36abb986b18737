#include "common/rpc_metrics.h"

#include <atomic>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/descriptor.h"

namespace qtrain {
namespace {

using grpc::experimental::InterceptionHookPoints;

constexpr char kUnknown[] = "unknown";
constexpr char kHealthService[] = "grpc.health.v1.Health";

// Latency buckets: sub-millisecond lookups up to GetKey's long waits.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
  return *buckets;
}

// Times one call from its start to the status it sends. A call that ends without sending a
// status (the peer went away first) counts as CANCELLED.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(std::shared_ptr<RpcMetrics> metrics, RpcMetrics::Method method)
      : metrics_(std::move(metrics)), method_(std::move(method)), start_(absl::Now()) {}
  ~MetricsInterceptor() override {
    if (!recorded_.exchange(true)) {
      metrics_->Record(method_, grpc::StatusCode::CANCELLED, absl::Now() - start_);
    }
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    // A stream's reads and writes may be intercepted on other threads than its status.
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        !recorded_.exchange(true)) {
      metrics_->Record(method_, methods->GetSendStatus().error_code(), absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  const std::shared_ptr<RpcMetrics> metrics_;
  const RpcMetrics::Method method_;
  const absl::Time start_;
  std::atomic<bool> recorded_{false};
};

class MetricsInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(std::shared_ptr<RpcMetrics> metrics)
      : metrics_(std::move(metrics)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, metrics_->Classify(info->method()));
  }

 private:
  const std::shared_ptr<RpcMetrics> metrics_;
};

}  // namespace

std::string GrpcCodeName(int number) {
  if (number < 0 || number > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) return "UNKNOWN";
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(number));
}

RpcMetrics::RpcMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      total_(prometheus::BuildCounter()
                 .Name("qtrain_rpc_total")
                 .Help("Finished RPCs by method and gRPC status code.")
                 .Register(*registry_)),
      seconds_(prometheus::BuildHistogram()
                   .Name("qtrain_rpc_seconds")
                   .Help("Handler latency of unary RPCs, in seconds.")
                   .Register(*registry_)) {}

void RpcMetrics::SetServices(const std::vector<std::string>& services) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  std::map<std::string, Method, std::less<>> methods;
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    if (service == nullptr && name == kHealthService) {
      // gRPC's own health service has no generated descriptors; its two methods are fixed.
      methods["/grpc.health.v1.Health/Check"] = {"grpc.health.v1.Health/Check", true};
      methods["/grpc.health.v1.Health/Watch"] = {"grpc.health.v1.Health/Watch", false};
    }
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = service->method(i);
      Method method;
      method.label = absl::StrCat(service->full_name(), "/", m->name());
      method.unary = !m->client_streaming() && !m->server_streaming();
      methods[absl::StrCat("/", method.label)] = std::move(method);
    }
  }
  absl::MutexLock lock(&mu_);
  methods_ = std::move(methods);
}

RpcMetrics::Method RpcMetrics::Classify(const char* path) const {
  if (path != nullptr) {
    absl::ReaderMutexLock lock(&mu_);
    if (auto it = methods_.find(std::string_view(path)); it != methods_.end()) return it->second;
  }
  return Method{.label = kUnknown, .unary = false};
}

void RpcMetrics::Record(const Method& method, grpc::StatusCode code, absl::Duration handler_time) {
  prometheus::Counter* counter = nullptr;
  prometheus::Histogram* histogram = nullptr;
  {
    absl::MutexLock lock(&mu_);
    prometheus::Counter*& c = counters_[{method.label, static_cast<int>(code)}];
    if (c == nullptr)
      c = &total_.Add({{"method", method.label}, {"code", GrpcCodeName(static_cast<int>(code))}});
    counter = c;
    if (method.unary) {
      prometheus::Histogram*& h = histograms_[method.label];
      if (h == nullptr) h = &seconds_.Add({{"method", method.label}}, LatencyBuckets());
      histogram = h;
    }
  }
  counter->Increment();
  if (histogram != nullptr) histogram->Observe(absl::ToDoubleSeconds(handler_time));
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::InterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(shared_from_this());
}

}  // namespace qtrain
