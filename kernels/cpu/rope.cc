// RoPE, NeoX half-split (rotate_half), with optional YaRN-scaled tables.
//   x, y, dy, dx [B, T, H, D]; inv_freq [D/2]; positions [B*T] (optional)
//   c = cos(p*inv_freq_i)*factor, s = sin(p*inv_freq_i)*factor (fp32 angle, as transformers)
//   forward:  y_i = x_i c - x_{i+D/2} s;   y_{i+D/2} = x_{i+D/2} c + x_i s
//   backward: dx_i += dy_i c + dy_{i+D/2} s;   dx_{i+D/2} += dy_{i+D/2} c - dy_i s
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

// cos_table[i] = cos(p * inv_freq[i]) * factor and sin_table[i] likewise, for i < half.
void Angles(int64_t pos, const float* inv_freq, float attention_factor, int64_t half,
            float* cos_table, float* sin_table) {
  const float p = static_cast<float>(pos);
  for (int64_t i = 0; i < half; ++i) {
    const float angle = p * inv_freq[i];
    cos_table[i] = std::cos(angle) * attention_factor;
    sin_table[i] = std::sin(angle) * attention_factor;
  }
}

template <bool kBackward>
void RotateToken(const float* in, float* out, int64_t num_heads, int64_t head_dim,
                 const float* cos_table, const float* sin_table) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    const float* a = in + h * head_dim;
    float* b = out + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float lo = a[i], hi = a[i + half], c = cos_table[i], s = sin_table[i];
      if constexpr (kBackward) {
        b[i] += lo * c + hi * s;
        b[i + half] += hi * c - lo * s;
      } else {
        b[i] = lo * c - hi * s;
        b[i + half] = hi * c + lo * s;
      }
    }
  }
}

// Applies the rotation (forward) or adds its transpose (backward) to every token. Without
// explicit positions every sequence has the same ones, so the angles are computed once per
// position rather than once per token.
template <bool kBackward>
void RopeApply(const float* in, float* out, const RopeShape& shape, const float* inv_freq,
               float attention_factor) {
  const int64_t tokens = shape.batch * shape.seq_len;
  const int64_t half = shape.head_dim / 2;
  const int64_t row = shape.num_heads * shape.head_dim;
  const bool parallel = WorthParallel(tokens * row);
  if (shape.positions == nullptr) {
    std::vector<float> cos_table(shape.seq_len * half), sin_table(shape.seq_len * half);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t t = 0; t < shape.seq_len; ++t) {
      Angles(shape.past_len + t, inv_freq, attention_factor, half, &cos_table[t * half],
             &sin_table[t * half]);
    }
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t tok = 0; tok < tokens; ++tok) {
      const int64_t t = tok % shape.seq_len;
      RotateToken<kBackward>(in + tok * row, out + tok * row, shape.num_heads, shape.head_dim,
                             &cos_table[t * half], &sin_table[t * half]);
    }
    return;
  }
#pragma omp parallel if (parallel)
  {
    std::vector<float> cos_table(half), sin_table(half);
#pragma omp for schedule(static)
    for (int64_t tok = 0; tok < tokens; ++tok) {
      Angles(shape.positions[tok], inv_freq, attention_factor, half, cos_table.data(),
             sin_table.data());
      RotateToken<kBackward>(in + tok * row, out + tok * row, shape.num_heads, shape.head_dim,
                             cos_table.data(), sin_table.data());
    }
  }
}

}  // namespace

OpStatus CpuBackendImpl::RopeForwardF32(const float* x, float* y, const RopeShape& shape,
                                        const float* inv_freq, float attention_factor) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateRope("RopeForward", x, y, shape, inv_freq));
  if (shape.seq_len == 0) return OpStatus::Ok();
  RopeApply<false>(x, y, shape, inv_freq, attention_factor);
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::RopeBackwardF32(const float* dy, float* dx, const RopeShape& shape,
                                         const float* inv_freq, float attention_factor) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateRope("RopeBackward", dy, dx, shape, inv_freq));
  if (shape.seq_len == 0) return OpStatus::Ok();
  if (dx == dy) return OpStatus::Error("RopeBackward: dx must not alias dy (it accumulates)");
  RopeApply<true>(dy, dx, shape, inv_freq, attention_factor);
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
