// Next-token selection for generation: greedy (temperature 0) or temperature + top-p (nucleus)
// sampling with a seeded, platform-independent random stream.
#ifndef QTRAIN_WORKER_MODEL_SAMPLER_H_
#define QTRAIN_WORKER_MODEL_SAMPLER_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain::model {

struct SamplerOptions {
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // in (0, 1]
  uint64_t seed = 0;
};

absl::Status ValidateSamplerOptions(const SamplerOptions& options);

class Sampler {
 public:
  explicit Sampler(SamplerOptions options);
  // Picks a token from one row of logits. Greedy breaks ties toward the lowest id (as
  // torch.argmax does).
  int64_t Next(std::span<const float> logits);

 private:
  double Uniform();  // [0, 1)
  SamplerOptions options_;
  uint64_t state_;
};

int64_t Argmax(std::span<const float> logits);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_SAMPLER_H_
