// The per-element math of the CUDA kernels, as __host__ __device__ functions, so that the CPU
// tests run exactly the arithmetic the GPU runs (kernels/cuda/element_math_test.cc) and the
// CPU backend shares what it can (AdamW). Plain C++ under a host compiler: QTRAIN_HD expands to
// nothing there. Only fp32 arithmetic and the bf16 and fp16 bit conversions; no CUDA headers; C++17
// (nvcc compiles it as such).
#ifndef QTRAIN_KERNELS_CUDA_ELEMENT_MATH_H_
#define QTRAIN_KERNELS_CUDA_ELEMENT_MATH_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/tensor.h"

#if defined(__CUDACC__)
#define QTRAIN_HD __host__ __device__ __forceinline__
#define QTRAIN_UNROLL _Pragma("unroll")
#else
#define QTRAIN_HD inline
#define QTRAIN_UNROLL
#endif

namespace qtrain::kernels::math {

// ---------------------------------------------------------------------------------------------
// bf16: the upper 16 bits of an fp32. Conversion rounds to nearest, ties to even (as
// __float2bfloat16_rn and torch do); a NaN stays a (quiet) NaN, infinities stay infinite, and a
// finite value past the largest bf16 rounds to infinity.
QTRAIN_HD uint32_t FloatBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

QTRAIN_HD float FloatFromBits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

QTRAIN_HD uint16_t Bf16FromFloat(float x) {
  const uint32_t u = FloatBits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

QTRAIN_HD float FloatFromBf16(uint16_t b) { return FloatFromBits(static_cast<uint32_t>(b) << 16); }

// ---------------------------------------------------------------------------------------------
// fp16 (IEEE binary16). Conversion rounds to nearest, ties to even (as __float2half_rn and
// torch do), with fp16's subnormals (down to 2^-24) kept and smaller values rounded to a signed
// zero; a finite value from 65520 up rounds to infinity; a NaN stays a quiet NaN.
QTRAIN_HD uint16_t F16FromFloat(float x) {
  const uint32_t u = FloatBits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: infinity
  if (a >= 0x38800000u) {  // a normal fp16 (>= 2^-14): rebias the exponent (127 -> 15), round
    const uint32_t rebiased = a - 0x38000000u;
    return static_cast<uint16_t>(sign | ((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13));
  }
  // Below 2^-14: a multiple of 2^-24. Adding 0.5 (whose fp32 ulp is 2^-24) rounds |x| to one,
  // to nearest even, in the fp32 addition itself; the sum's low bits are then the count.
  const float sum = FloatFromBits(a) + 0.5f;
  return static_cast<uint16_t>(sign | (FloatBits(sum) - 0x3f000000u));
}

QTRAIN_HD float FloatFromF16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return FloatFromBits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in fp32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return FloatFromBits(sign | FloatBits(magnitude));
  }
  return FloatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Storage types of the kernels' tensors: fp32, bf16 or fp16 bits (kernels/tensor.h). The math
// is fp32 whatever the storage.
using ::qtrain::kernels::Bf16;
using ::qtrain::kernels::F16;

QTRAIN_HD float ToFloat(float x) { return x; }
QTRAIN_HD float ToFloat(Bf16 x) { return FloatFromBf16(x.bits); }
QTRAIN_HD float ToFloat(F16 x) { return FloatFromF16(x.bits); }
QTRAIN_HD void Store(float value, float& out) { out = value; }
QTRAIN_HD void Store(float value, Bf16& out) { out.bits = Bf16FromFloat(value); }
QTRAIN_HD void Store(float value, F16& out) { out.bits = F16FromFloat(value); }

// ---------------------------------------------------------------------------------------------
// AdamW (torch.optim.AdamW's single-tensor arithmetic; kernels/ops.h AdamWStep). The scalars are
// formed once per step on the host, in double as torch forms them, then rounded to fp32.
struct AdamWScalars {
  float grad_scale;
  float decay;  // 1 - lr*wd, or 1 without weight decay
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float step_size;  // lr / (1 - beta1^step)
  float bias_correction2_sqrt;
  float eps;
};

// Host only (double pow): the scalars of step `step` (1-based).
inline AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps,
                                     double weight_decay, bool apply_weight_decay, int64_t step,
                                     float grad_scale) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  AdamWScalars s;
  s.grad_scale = grad_scale;
  s.decay = apply_weight_decay ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / bias_correction1);
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(eps);
  return s;
}

// One element: w, m, v updated in place from the gradient g_raw.
QTRAIN_HD void AdamWElement(const AdamWScalars& s, float g_raw, float& w, float& m, float& v) {
  const float g = g_raw * s.grad_scale;
  float wi = w * s.decay;
  const float mi = m + s.one_minus_beta1 * (g - m);  // torch's lerp (weight < 0.5)
  const float vi = v * s.beta2 + s.one_minus_beta2 * (g * g);
  const float denom = std::sqrt(vi) / s.bias_correction2_sqrt + s.eps;
  wi -= s.step_size * (mi / denom);
  m = mi;
  v = vi;
  w = wi;
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: out = silu(a) * u with silu(a) = a * sigmoid(a).
QTRAIN_HD float Sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }

QTRAIN_HD float SwigluForward(float a, float u) { return a * Sigmoid(a) * u; }

// The two gradients of one element (the caller adds them): dup = d*silu(a);
// dgate = d*u*sigmoid(a)*(1 + a*(1 - sigmoid(a))).
struct SwigluGrads {
  float dgate;
  float dup;
};

QTRAIN_HD SwigluGrads SwigluBackward(float d, float a, float u) {
  const float sig = Sigmoid(a);
  return {d * u * sig * (1.0f + a * (1.0f - sig)), d * a * sig};
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: rstd = 1/sqrt(sum_sq/dim + eps) from a row's fp32 sum of squares; out = w * (x*rstd).
QTRAIN_HD float RmsNormRstd(float sum_squares, int dim, float eps) {
  return 1.0f / std::sqrt(sum_squares / static_cast<float>(dim) + eps);
}

QTRAIN_HD float RmsNormOut(float x, float weight, float rstd) { return weight * (x * rstd); }

// dx of one element, from the row's mean_dot = mean_j(dout_j * w_j * x_j * rstd).
QTRAIN_HD float RmsNormDx(float dout, float x, float weight, float rstd, float mean_dot) {
  return rstd * (dout * weight - (x * rstd) * mean_dot);
}

// ---------------------------------------------------------------------------------------------
// RoPE (NeoX half split) on one pair (x_i, x_{i+D/2}) with c, s the scaled cos and sin.
struct Pair {
  float lo;
  float hi;
};

// c and s of position p for frequency inv_freq, the angle an fp32 product (as transformers).
QTRAIN_HD Pair RopeCosSin(int64_t position, float inv_freq, float attention_factor) {
  const float angle = static_cast<float>(position) * inv_freq;
  return {std::cos(angle) * attention_factor, std::sin(angle) * attention_factor};
}

QTRAIN_HD Pair RopeRotate(Pair x, float c, float s) {
  return {x.lo * c - x.hi * s, x.hi * c + x.lo * s};
}

// The transpose (what the backward adds to dx).
QTRAIN_HD Pair RopeRotateTransposed(Pair dy, float c, float s) {
  return {dy.lo * c + dy.hi * s, dy.hi * c - dy.lo * s};
}

// ---------------------------------------------------------------------------------------------
// Online softmax state of a row: running max and the sum of exp(x - max). Merging is exact up
// to rounding in any grouping, which is how a row split over threads or tiles is reduced; a
// fixed merge order keeps the result deterministic.
struct SoftmaxState {
  float max;  // -inf for an empty state
  float sum;  // sum of exp(x - max); 0 for an empty state
};

QTRAIN_HD SoftmaxState SoftmaxEmpty() { return {-INFINITY, 0.0f}; }

QTRAIN_HD SoftmaxState SoftmaxAdd(SoftmaxState s, float x) {
  if (x == -INFINITY) return s;  // exp(-inf) adds nothing (and -inf - -inf would be NaN)
  if (x <= s.max) return {s.max, s.sum + std::exp(x - s.max)};
  return {x, s.sum * std::exp(s.max - x) + 1.0f};
}

QTRAIN_HD SoftmaxState SoftmaxMerge(SoftmaxState a, SoftmaxState b) {
  if (b.sum == 0.0f) return a;
  if (a.sum == 0.0f) return b;
  if (a.max >= b.max) return {a.max, a.sum + b.sum * std::exp(b.max - a.max)};
  return {b.max, b.sum + a.sum * std::exp(a.max - b.max)};
}

// logsumexp of the row.
QTRAIN_HD float SoftmaxLse(SoftmaxState s) { return s.max + std::log(s.sum); }

// Cross-entropy gradient of one logit: (softmax - onehot) * grad_scale.
QTRAIN_HD float CrossEntropyGrad(float logit, float lse, bool is_label, float grad_scale) {
  return (std::exp(logit - lse) - (is_label ? 1.0f : 0.0f)) * grad_scale;
}

// The gradient reduction's summation order (worker/comm/tree_sum.h, TreeSumOf) over count
// values at values[0], values[stride], ..., values[(count - 1) * stride]: a binary counter over
// the values in order, then the leftover partials folded from the smallest. count < 2^31.
//
// partial[level] holds the sum of the latest complete subtree of 2^level values, present while
// bit `level` of the number of values added is set. The loops over the levels have a constant
// trip count and are unrolled on the device, so partial[] lives in registers (no local memory:
// check_cuda_objects.sh fails a kernel with any).
template <typename T>
QTRAIN_HD T TreeSumStrided(const T* values, int64_t stride, int count) {
  constexpr int kLevels = 31;
  T partial[kLevels] = {};
  for (int k = 0; k < count; ++k) {
    T carry = values[k * stride];
    bool placed = false;
    QTRAIN_UNROLL
    for (int level = 0; level < kLevels; ++level) {
      if (placed) continue;
      if ((k >> level) & 1) {
        carry = partial[level] + carry;  // earlier + later
      } else {
        partial[level] = carry;
        placed = true;
      }
    }
  }
  T acc{};
  bool have = false;
  QTRAIN_UNROLL
  for (int level = 0; level < kLevels; ++level) {
    if ((count >> level) & 1) {
      acc = have ? partial[level] + acc : partial[level];
      have = true;
    }
  }
  return acc;
}

}  // namespace qtrain::kernels::math

#endif  // QTRAIN_KERNELS_CUDA_ELEMENT_MATH_H_
