#include "worker/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace qtrain::model {

absl::Status ValidateSamplerOptions(const SamplerOptions& options) {
  if (!(options.temperature >= 0) || !std::isfinite(options.temperature)) {
    return absl::InvalidArgumentError("temperature must be a finite number >= 0");
  }
  if (!(options.top_p > 0 && options.top_p <= 1)) {
    return absl::InvalidArgumentError("top-p must be in (0, 1]");
  }
  return absl::OkStatus();
}

int64_t Argmax(std::span<const float> logits) {
  return std::max_element(logits.begin(), logits.end()) - logits.begin();
}

Sampler::Sampler(SamplerOptions options) : options_(options), state_(options.seed) {}

double Sampler::Uniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int64_t Sampler::Next(std::span<const float> logits) {
  if (options_.temperature == 0.0) return Argmax(logits);
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / options_.temperature);
    total += probs[i];
  }
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  // Most probable first; the nucleus is the shortest prefix whose mass reaches top_p.
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
  double kept = 0;
  size_t nucleus = 0;
  while (nucleus < order.size()) {
    kept += probs[order[nucleus++]];
    if (kept >= options_.top_p * total) break;
  }
  double target = Uniform() * kept;
  for (size_t i = 0; i < nucleus; ++i) {
    target -= probs[order[i]];
    if (target < 0) return order[i];
  }
  return order[nucleus - 1];
}

}  // namespace qtrain::model
