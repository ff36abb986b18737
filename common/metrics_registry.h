// A prometheus::Registry that also serves Collectables computed at scrape time (state-derived
// families, e.g. jobs by state), which prometheus::Registry itself cannot hold. Anything that
// collects the registry (MetricsServer) collects them too.
//
//   auto registry = std::make_shared<MetricsRegistry>();
//   auto state = std::make_shared<MyCollectable>(...);
//   registry->AddCollectable(state);  // held weakly: collected while `state` lives
//   MetricsServer::Start(options, registry);
#ifndef QTRAIN_COMMON_METRICS_REGISTRY_H_
#define QTRAIN_COMMON_METRICS_REGISTRY_H_

#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace qtrain {

class MetricsRegistry : public prometheus::Registry {
 public:
  MetricsRegistry() = default;

  // Collected after the registry's own families, in the order added, until it expires.
  void AddCollectable(std::weak_ptr<prometheus::Collectable> collectable);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  mutable absl::Mutex mu_;
  mutable std::vector<std::weak_ptr<prometheus::Collectable>> collectables_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_METRICS_REGISTRY_H_
