#include "common/metrics_registry.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/text_serializer.h"

namespace qtrain {
namespace {

class FixedCollectable : public prometheus::Collectable {
 public:
  explicit FixedCollectable(double value) : value_(value) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily family;
    family.name = "test_state";
    family.help = "a state gauge";
    family.type = prometheus::MetricType::Gauge;
    family.metric.emplace_back().gauge.value = value_;
    return {family};
  }

 private:
  double value_;
};

std::string Text(const prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

TEST(MetricsRegistryTest, CollectsItsFamiliesAndLiveCollectables) {
  auto registry = std::make_shared<MetricsRegistry>();
  prometheus::BuildCounter()
      .Name("test_events_total")
      .Help("events")
      .Register(*registry)
      .Add({})
      .Increment(3);
  auto state = std::make_shared<FixedCollectable>(7);
  registry->AddCollectable(state);
  // Through the base class, as an exposer sees it.
  const prometheus::Registry& base = *registry;
  std::string text = Text(base);
  EXPECT_NE(text.find("test_events_total 3"), std::string::npos) << text;
  EXPECT_NE(text.find("test_state 7"), std::string::npos) << text;
  state.reset();
  text = Text(base);
  EXPECT_NE(text.find("test_events_total 3"), std::string::npos) << text;
  EXPECT_EQ(text.find("test_state"), std::string::npos) << text;
}

}  // namespace
}  // namespace qtrain
