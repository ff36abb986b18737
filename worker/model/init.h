// Parameter initialization as transformers' Qwen2PreTrainedModel._init_weights does it:
// every Linear weight and the embedding ~ N(0, initializer_range), biases 0, RMSNorm weights 1.
//
// The random stream is qtrain's own (splitmix64 + Box-Muller), so the same seed gives the same
// weights on every platform and standard library. Each tensor draws from a stream keyed by the
// seed and the tensor's name, so the values do not depend on the layout order.
#ifndef QTRAIN_WORKER_MODEL_INIT_H_
#define QTRAIN_WORKER_MODEL_INIT_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "worker/model/config.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {

// Fills `params` (layout.total_size() floats; padding set to 0).
void InitializeParameters(const ModelConfig& config, const ParameterLayout& layout, uint64_t seed,
                          std::span<float> params);

// Deterministic N(0, 1) samples (splitmix64 + Box-Muller): the sequence is a pure function of
// `key`, identical on every platform.
class NormalStream {
 public:
  explicit NormalStream(uint64_t key) : state_(key) {}
  double Next();

 private:
  uint64_t NextBits();
  uint64_t state_;
  bool has_spare_ = false;
  double spare_ = 0;
};

uint64_t HashName(uint64_t seed, std::string_view name);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_INIT_H_
