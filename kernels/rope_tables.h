// RoPE inverse frequencies and the attention factor exactly as transformers computes them
// (modeling_rope_utils.py: _compute_default_rope_parameters, _compute_yarn_parameters).
// See docs/model-math.md#rope-tables. Host-side, backend-independent: the model computes the tables
// once and passes inv_freq / attention_factor to Backend::RopeForward.
#ifndef QTRAIN_KERNELS_ROPE_TABLES_H_
#define QTRAIN_KERNELS_ROPE_TABLES_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/status.h"

namespace qtrain::kernels {

struct RopeConfig {
  int64_t head_dim = 64;  // rotary dim (head_dim x partial_rotary_factor); even
  double theta = 1e6;     // rope_theta
  bool yarn = false;      // rope_type "yarn"; otherwise plain RoPE with attention factor 1
  // YaRN only. The caller resolves transformers' version-dependent choice of factor and L0
  // (docs/model-math.md#version-trap) and passes the values to use.
  double factor = 1.0;                           // s
  int64_t original_max_position_embeddings = 0;  // L0; must be > 0 when yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // explicit override
  std::optional<double> mscale;            // DeepSeek-style ratio, used only if both are set
  std::optional<double> mscale_all_dim;
  bool truncate = true;  // floor/ceil the correction range
};

struct RopeTables {
  std::vector<float> inv_freq;    // [head_dim / 2], fp32 as transformers stores the buffer
  float attention_factor = 1.0f;  // multiplies both cos and sin (logits scale by its square)
  // YaRN correction range (pair indices); 0/0 without YaRN. For inspection and tests.
  double low = 0.0;
  double high = 0.0;
};

// Fills `out`. Errors: odd or non-positive head_dim, theta <= 1, YaRN with factor <= 0 or L0 <= 0.
OpStatus ComputeRopeTables(const RopeConfig& config, RopeTables* out);

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_ROPE_TABLES_H_
