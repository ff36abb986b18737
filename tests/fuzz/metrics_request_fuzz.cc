// Feeds arbitrary request heads to the metrics endpoint's router (MetricsHttpResponse) and
// arbitrary text to its --metrics-listen parser: never a crash; every answer is one of the
// endpoint's statuses, and the metrics are only ever served to GET /metrics.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/metrics_server.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace {

const prometheus::Registry& Metrics() {
  static const auto* registry = [] {
    auto* r = new prometheus::Registry();
    prometheus::BuildGauge().Name("qtrain_fuzz_value").Help("h").Register(*r).Add({}).Set(1);
    return r;
  }();
  return *registry;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string response = qtrain::MetricsHttpResponse(text, Metrics());
  const bool known =
      absl::StartsWith(response, "HTTP/1.1 200 ") || absl::StartsWith(response, "HTTP/1.1 400 ") ||
      absl::StartsWith(response, "HTTP/1.1 404 ") || absl::StartsWith(response, "HTTP/1.1 405 ") ||
      absl::StartsWith(response, "HTTP/1.1 505 ");
  if (!known) __builtin_trap();
  const bool served = absl::StrContains(response, "qtrain_fuzz_value");
  const bool get_metrics =
      absl::StartsWith(text, "GET /metrics ") || absl::StartsWith(text, "GET /metrics?");
  if (served != absl::StartsWith(response, "HTTP/1.1 200 ") || (served && !get_metrics)) {
    __builtin_trap();
  }
  (void)qtrain::CheckMetricsListen(std::string(text), "--metrics-listen");
  return 0;
}
