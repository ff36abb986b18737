// inv_freq and attention factor as transformers' modeling_rope_utils.py computes them: the
// frequencies in fp32 tensor arithmetic, the YaRN correction range and mscale in Python doubles.
#include "kernels/rope_tables.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

namespace qtrain::kernels {
namespace {

// _compute_yarn_parameters.find_correction_dim: the pair index whose wavelength fits
// `num_rotations` turns in the original context.
double CorrectionDim(double num_rotations, double dim, double base, double max_position) {
  return (dim * std::log(max_position / (num_rotations * 2.0 * std::numbers::pi))) /
         (2.0 * std::log(base));
}

// get_mscale.
double YarnMscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

OpStatus ComputeRopeTables(const RopeConfig& config, RopeTables* out) {
  if (out == nullptr) return OpStatus::Error("ComputeRopeTables: out is null");
  if (config.head_dim <= 0 || config.head_dim % 2 != 0) {
    return OpStatus::Error("ComputeRopeTables: head_dim must be positive and even, got " +
                           std::to_string(config.head_dim));
  }
  if (!(config.theta > 1.0)) {
    return OpStatus::Error("ComputeRopeTables: theta must be > 1, got " +
                           std::to_string(config.theta));
  }
  const int64_t half = config.head_dim / 2;
  const float dim_f = static_cast<float>(config.head_dim);
  const float base_f = static_cast<float>(config.theta);
  // pos_freqs = base ** (arange(0, dim, 2).float() / dim), in fp32.
  std::vector<float> pos_freqs(half);
  for (int64_t i = 0; i < half; ++i) {
    pos_freqs[i] = std::pow(base_f, static_cast<float>(2 * i) / dim_f);
  }
  RopeTables tables;
  tables.inv_freq.resize(half);
  if (!config.yarn) {
    for (int64_t i = 0; i < half; ++i) tables.inv_freq[i] = 1.0f / pos_freqs[i];
    *out = std::move(tables);
    return OpStatus::Ok();
  }

  if (!(config.factor > 0.0)) {
    return OpStatus::Error("ComputeRopeTables: YaRN factor must be > 0, got " +
                           std::to_string(config.factor));
  }
  if (config.original_max_position_embeddings <= 0) {
    return OpStatus::Error("ComputeRopeTables: YaRN needs original_max_position_embeddings > 0");
  }
  if (!(config.beta_fast > 0.0) || !(config.beta_slow > 0.0)) {
    return OpStatus::Error("ComputeRopeTables: YaRN beta_fast and beta_slow must be > 0");
  }
  const double dim = static_cast<double>(config.head_dim);
  const double l0 = static_cast<double>(config.original_max_position_embeddings);
  double low = CorrectionDim(config.beta_fast, dim, config.theta, l0);
  double high = CorrectionDim(config.beta_slow, dim, config.theta, l0);
  if (config.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  tables.low = low;
  tables.high = high;

  // linear_ramp_factor in fp32; extrapolation weight = 1 - ramp.
  // Python computes max - min in double; the tensor arithmetic is fp32.
  const double ramp_max = high == low ? high + 0.001 : high;
  const float ramp_min = static_cast<float>(low);
  const float ramp_width = static_cast<float>(ramp_max - low);
  const float factor_f = static_cast<float>(config.factor);
  for (int64_t i = 0; i < half; ++i) {
    float ramp = (static_cast<float>(i) - ramp_min) / ramp_width;
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extrapolation_weight = 1.0f - ramp;
    const float inv_extrapolation = 1.0f / pos_freqs[i];
    const float inv_interpolation = 1.0f / (factor_f * pos_freqs[i]);
    tables.inv_freq[i] = inv_interpolation * (1.0f - extrapolation_weight) +
                         inv_extrapolation * extrapolation_weight;
  }

  double attention_factor;
  if (config.attention_factor.has_value()) {
    attention_factor = *config.attention_factor;
  } else if (config.mscale.has_value() && config.mscale_all_dim.has_value() &&
             *config.mscale != 0.0 && *config.mscale_all_dim != 0.0) {
    attention_factor = YarnMscale(config.factor, *config.mscale) /
                       YarnMscale(config.factor, *config.mscale_all_dim);
  } else {
    attention_factor = YarnMscale(config.factor, 1.0);
  }
  tables.attention_factor = static_cast<float>(attention_factor);
  *out = std::move(tables);
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels
