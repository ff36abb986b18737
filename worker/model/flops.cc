#include "worker/model/flops.h"

namespace qtrain::model {

// In doubles: a count that overflows int64 is still a meaningful (if huge) figure.
double MatmulParameters(const ModelConfig& config) {
  const double hidden = static_cast<double>(config.hidden_size);
  const double q = static_cast<double>(config.q_dim());
  const double kv = static_cast<double>(config.kv_dim());
  const double inter = static_cast<double>(config.intermediate_size);
  const double attention = hidden * q + 2 * hidden * kv + q * hidden;  // q, k, v, o
  const double mlp = 3 * hidden * inter;                               // gate, up, down
  const double lm_head = static_cast<double>(config.vocab_size) * hidden;
  return static_cast<double>(config.num_layers) * (attention + mlp) + lm_head;
}

double FlopsPerToken(const ModelConfig& config, int64_t seq_len) {
  return 6 * MatmulParameters(config) + 12 * static_cast<double>(config.num_layers) *
                                            static_cast<double>(config.hidden_size) *
                                            static_cast<double>(seq_len);
}

}  // namespace qtrain::model
