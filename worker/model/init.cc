#include "worker/model/init.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace qtrain::model {

uint64_t NormalStream::NextBits() {
  // splitmix64
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double NormalStream::Next() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // Uniforms in (0, 1]: 53 random bits, offset so that log() never sees 0.
  const double u1 = (static_cast<double>(NextBits() >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(NextBits() >> 11) * 0x1.0p-53;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double angle = 2.0 * std::numbers::pi * u2;
  spare_ = r * std::sin(angle);
  has_spare_ = true;
  return r * std::cos(angle);
}

uint64_t HashName(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull ^ (seed * 0x9E3779B97F4A7C15ull);  // FNV-1a, seeded
  for (char ch : name) {
    h ^= static_cast<unsigned char>(ch);
    h *= 0x100000001B3ull;
  }
  return h;
}

void InitializeParameters(const ModelConfig& config, const ParameterLayout& layout, uint64_t seed,
                          std::span<float> params) {
  std::fill(params.begin(), params.end(), 0.0f);
  for (const TensorSlot& t : layout.tensors()) {
    float* out = params.data() + t.offset;
    const bool is_norm = t.name.ends_with("norm.weight");
    const bool is_bias = t.name.ends_with(".bias");
    if (is_norm) {
      std::fill(out, out + t.size, 1.0f);
    } else if (!is_bias) {
      NormalStream stream(HashName(seed, t.name));
      for (int64_t i = 0; i < t.size; ++i) {
        out[i] = static_cast<float>(config.initializer_range * stream.Next());
      }
    }
  }
}

}  // namespace qtrain::model
