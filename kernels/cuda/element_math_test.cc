// The CUDA kernels' per-element math (element_math.h), run on the CPU against the float64
// reference ops and against exact definitions (bf16 rounding).
#include "kernels/cuda/element_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"
#include "kernels/reference/reference_ops.h"

namespace qtrain::kernels::math {
namespace {

using testing::MaxRelError;
using testing::RandomFloats;
using testing::ToDouble;

// The bf16 nearest to x, ties to the even mantissa, by comparing the two candidates in double.
uint16_t NearestBf16(float x) {
  const uint32_t u = FloatBits(x);
  const uint16_t down = static_cast<uint16_t>(u >> 16);  // toward zero
  const uint16_t up = static_cast<uint16_t>(down + 1);   // away from zero (may reach inf)
  const double d_down = std::fabs(static_cast<double>(FloatFromBf16(down)) - x);
  const double d_up = std::fabs(static_cast<double>(FloatFromBf16(up)) - x);
  if (d_down < d_up) return down;
  if (d_up < d_down) return up;
  return (down & 1u) == 0 ? down : up;
}

TEST(ElementMathTest, Bf16RoundsToNearestEven) {
  // Every bf16 value comes back unchanged.
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float x = FloatFromBf16(static_cast<uint16_t>(b));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(FloatFromBf16(Bf16FromFloat(x)))) << b;
    } else {
      EXPECT_EQ(Bf16FromFloat(x), b) << b;
    }
  }
  // Random finite floats of every magnitude, and exact halfway points.
  std::mt19937 rng(11);
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = rng();
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // a tie
    const float x = FloatFromBits(u);
    if (!std::isfinite(x)) continue;
    // Past the largest bf16 the nearest "candidate" is infinity: checked below.
    if (std::fabs(x) > 3.3895313e38f) continue;
    ASSERT_EQ(Bf16FromFloat(x), NearestBf16(x)) << std::hex << u;
    ++checked;
  }
  EXPECT_GT(checked, 150000);
  EXPECT_EQ(Bf16FromFloat(1.0f + 1.0f / 256), Bf16FromFloat(1.0f));  // tie to even: down
  EXPECT_EQ(FloatFromBf16(Bf16FromFloat(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);  // tie: up
  EXPECT_EQ(FloatFromBf16(Bf16FromFloat(std::numeric_limits<float>::max())), INFINITY);
  EXPECT_EQ(FloatFromBf16(Bf16FromFloat(-INFINITY)), -INFINITY);
  const uint16_t nan = Bf16FromFloat(FloatFromBits(0x7f800001u));  // a NaN with low bits only
  EXPECT_TRUE(std::isnan(FloatFromBf16(nan)));
  EXPECT_EQ(FloatFromBf16(Bf16FromFloat(-0.0f)), 0.0f);
  EXPECT_TRUE(std::signbit(FloatFromBf16(Bf16FromFloat(-0.0f))));
}

// fp16 bits -> value, from the definition (ldexp in double).
double F16Value(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0x1f) return mantissa == 0 ? sign * INFINITY : NAN;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// The fp16 value nearest to x, ties to the even multiple of the ulp, in double.
double NearestF16Value(float x) {
  const double a = std::fabs(static_cast<double>(x));
  const double sign = std::signbit(x) ? -1.0 : 1.0;
  if (a >= 65520.0) return sign * INFINITY;  // 65504 + half its ulp, a tie rounding to even (up)
  const int exponent = a < std::ldexp(1.0, -14) ? -14 : std::ilogb(a);
  const double ulp = std::ldexp(1.0, exponent - 10);
  return sign * std::nearbyint(a / ulp) * ulp;  // the default rounding: to nearest even
}

TEST(ElementMathTest, Fp16BitsAreTheirValues) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const double expected = F16Value(bits);
    const float got = FloatFromF16(bits);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      ASSERT_TRUE(std::isnan(FloatFromF16(F16FromFloat(got)))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), expected) << std::hex << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;
    ASSERT_EQ(F16FromFloat(got), bits) << std::hex << h;  // every fp16 round-trips
  }
}

TEST(ElementMathTest, Fp16RoundsToNearestEven) {
  // A sweep of fp32 bit patterns (both signs, every exponent), then the hard cases: the
  // midpoints between neighbouring fp16 values and the floats next to them.
  std::vector<float> inputs;
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4093) {
    inputs.push_back(FloatFromBits(static_cast<uint32_t>(u)));
  }
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    const double mid =
        (F16Value(static_cast<uint16_t>(h)) + F16Value(static_cast<uint16_t>(h + 1))) / 2;
    const auto f = static_cast<float>(mid);  // exact: a midpoint has 12 significant bits
    for (float x : {f, std::nextafter(f, 0.0f), std::nextafter(f, INFINITY)}) {
      inputs.push_back(x);
      inputs.push_back(-x);
    }
  }
  for (float x : inputs) {
    const float got = FloatFromF16(F16FromFloat(x));
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << FloatBits(x);
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), NearestF16Value(x)) << std::hex << FloatBits(x);
    ASSERT_EQ(std::signbit(got), std::signbit(x)) << std::hex << FloatBits(x);
  }
  EXPECT_EQ(FloatFromF16(F16FromFloat(65504.0f)), 65504.0f);
  EXPECT_EQ(FloatFromF16(F16FromFloat(65519.0f)), 65504.0f);
  EXPECT_EQ(FloatFromF16(F16FromFloat(65520.0f)), INFINITY);
  EXPECT_EQ(FloatFromF16(F16FromFloat(std::ldexp(1.0f, -25))), 0.0f);  // a tie: to even (zero)
  EXPECT_EQ(FloatFromF16(F16FromFloat(std::ldexp(1.5f, -25))), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16FromFloat(1.0f), 0x3c00u);
  EXPECT_EQ(F16FromFloat(-2.0f), 0xc000u);
}

TEST(ElementMathTest, AdamWElementIsTheCpuBackendsStep) {
  const int64_t n = 5003;
  std::vector<float> p = RandomFloats(n, 1), g = RandomFloats(n, 2, -0.1f, 0.1f);
  std::vector<float> m = RandomFloats(n, 3, -0.01f, 0.01f), v = RandomFloats(n, 4, 0.0f, 1e-4f);
  std::vector<float> p2 = p, m2 = m, v2 = v;
  for (int64_t step = 1; step <= 3; ++step) {
    const AdamWParams params{.lr = 3e-4,
                             .beta1 = 0.9,
                             .beta2 = 0.95,
                             .eps = 1e-8,
                             .weight_decay = 0.1,
                             .apply_weight_decay = step != 2,
                             .step = step,
                             .grad_scale = 0.5f};
    ASSERT_OP_OK(CpuBackend().AdamWStep(p.data(), g.data(), m.data(), v.data(), n, params));
    const AdamWScalars s =
        MakeAdamWScalars(params.lr, params.beta1, params.beta2, params.eps, params.weight_decay,
                         params.apply_weight_decay, params.step, params.grad_scale);
    for (int64_t i = 0; i < n; ++i) AdamWElement(s, g[i], p2[i], m2[i], v2[i]);
  }
  EXPECT_EQ(p, p2);
  EXPECT_EQ(m, m2);
  EXPECT_EQ(v, v2);
}

TEST(ElementMathTest, AdamWElementMatchesTorchsFormulaInDouble) {
  // torch.optim.AdamW, one step from w = 0.5, m = 0.01, v = 1e-4 with g = 0.2 (step 3).
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
  const double w0 = 0.5, m0 = 0.01, v0 = 1e-4, g = 0.2;
  const double m1 = b1 * m0 + (1 - b1) * g, v1 = b2 * v0 + (1 - b2) * g * g;
  const double bc1 = 1 - std::pow(b1, 3), bc2 = 1 - std::pow(b2, 3);
  const double w1 = w0 * (1 - lr * wd) - lr / bc1 * m1 / (std::sqrt(v1) / std::sqrt(bc2) + eps);
  float w = 0.5f, m = 0.01f, v = 1e-4f;
  AdamWElement(MakeAdamWScalars(lr, b1, b2, eps, wd, true, 3, 1.0f), 0.2f, w, m, v);
  EXPECT_NEAR(w, w1, 1e-6);
  EXPECT_NEAR(m, m1, 1e-8);
  EXPECT_NEAR(v, v1, 1e-10);
}

TEST(ElementMathTest, SwigluMatchesTheReference) {
  const int64_t n = 4099;
  const std::vector<float> gate = RandomFloats(n, 5, -12.0f, 12.0f), up = RandomFloats(n, 6);
  const std::vector<float> dout = RandomFloats(n, 7);
  std::vector<float> out(n), dgate(n), dup(n);
  for (int64_t i = 0; i < n; ++i) {
    out[i] = SwigluForward(gate[i], up[i]);
    const SwigluGrads g = SwigluBackward(dout[i], gate[i], up[i]);
    dgate[i] = g.dgate;
    dup[i] = g.dup;
  }
  const std::vector<double> gd = ToDouble(gate), ud = ToDouble(up), dd = ToDouble(dout);
  std::vector<double> ref(n), ref_dgate(n, 0.0), ref_dup(n, 0.0);
  reference::SwigluForward(gd.data(), ud.data(), ref.data(), n);
  reference::SwigluBackward(dd.data(), gd.data(), ud.data(), ref_dgate.data(), ref_dup.data(), n);
  EXPECT_LT(MaxRelError(out, ref), 1e-6);
  EXPECT_LT(MaxRelError(dgate, ref_dgate), 1e-6);
  EXPECT_LT(MaxRelError(dup, ref_dup), 1e-6);
}

TEST(ElementMathTest, RmsNormMatchesTheReference) {
  const int64_t rows = 7, dim = 896;
  const float eps = 1e-6f;
  const std::vector<float> x = RandomFloats(rows * dim, 8, -3.0f, 3.0f);
  const std::vector<float> w = RandomFloats(dim, 9, 0.5f, 1.5f);
  const std::vector<float> dout = RandomFloats(rows * dim, 10);
  std::vector<float> out(rows * dim), rstd(rows), dx(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.0f;
    for (int64_t j = 0; j < dim; ++j) sum += x[r * dim + j] * x[r * dim + j];
    rstd[r] = RmsNormRstd(sum, static_cast<int>(dim), eps);
    float dot = 0.0f;
    for (int64_t j = 0; j < dim; ++j) {
      out[r * dim + j] = RmsNormOut(x[r * dim + j], w[j], rstd[r]);
      dot += dout[r * dim + j] * w[j] * (x[r * dim + j] * rstd[r]);
    }
    const float mean_dot = dot / static_cast<float>(dim);
    for (int64_t j = 0; j < dim; ++j) {
      dx[r * dim + j] = RmsNormDx(dout[r * dim + j], x[r * dim + j], w[j], rstd[r], mean_dot);
    }
  }
  const std::vector<double> xd = ToDouble(x), wd = ToDouble(w), dd = ToDouble(dout);
  std::vector<double> ref(rows * dim), ref_rstd(rows), ref_dx(rows * dim, 0.0), ref_dw(dim, 0.0);
  reference::RmsNormForward(xd.data(), wd.data(), double{eps}, ref.data(), ref_rstd.data(), rows,
                            dim);
  reference::RmsNormBackward(dd.data(), xd.data(), wd.data(), ref_rstd.data(), ref_dx.data(),
                             ref_dw.data(), rows, dim);
  EXPECT_LT(MaxRelError(rstd, ref_rstd), 1e-5);
  EXPECT_LT(MaxRelError(out, ref), 1e-5);
  EXPECT_LT(MaxRelError(dx, ref_dx), 1e-5);
}

TEST(ElementMathTest, RopeMatchesTheReferenceForwardAndTransposed) {
  const int64_t tokens = 5, heads = 3, dim = 64, half = dim / 2;
  const std::vector<float> x = RandomFloats(tokens * heads * dim, 12);
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(1e6, -2.0 * i / dim));
  }
  const std::vector<int32_t> positions = {0, 1, 77, 4095, 32767};
  const float factor = 1.1386f;  // a YaRN attention factor
  std::vector<float> y(x.size()), dx(x.size(), 0.0f);
  for (int64_t tok = 0; tok < tokens; ++tok) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t base = (tok * heads + h) * dim;
        const Pair cs = RopeCosSin(positions[tok], inv_freq[i], factor);
        const Pair in{x[base + i], x[base + i + half]};
        const Pair out = RopeRotate(in, cs.lo, cs.hi);
        const Pair back = RopeRotateTransposed(in, cs.lo, cs.hi);
        y[base + i] = out.lo;
        y[base + i + half] = out.hi;
        dx[base + i] += back.lo;
        dx[base + i + half] += back.hi;
      }
    }
  }
  const std::vector<double> xd = ToDouble(x);
  std::vector<double> ref(x.size()), ref_dx(x.size(), 0.0);
  reference::RopeForward(xd.data(), ref.data(), tokens, heads, dim, positions.data(),
                         inv_freq.data(), factor);
  reference::RopeBackward(xd.data(), ref_dx.data(), tokens, heads, dim, positions.data(),
                          inv_freq.data(), factor);
  EXPECT_LT(MaxRelError(y, ref), 1e-6);
  EXPECT_LT(MaxRelError(dx, ref_dx), 1e-6);
}

TEST(ElementMathTest, OnlineSoftmaxMergesInAnyGroupingToTheCrossEntropy) {
  const int64_t vocab = 151936;
  const std::vector<float> logits = RandomFloats(vocab, 13, -20.0f, 20.0f);
  const int32_t label = 4242;
  // One pass, and 37 uneven slices merged left to right (how a row split over threads reduces).
  SoftmaxState whole = SoftmaxEmpty();
  for (float z : logits) whole = SoftmaxAdd(whole, z);
  SoftmaxState merged = SoftmaxEmpty();
  for (int64_t begin = 0, k = 0; begin < vocab; ++k) {
    const int64_t end = std::min<int64_t>(vocab, begin + 1000 + 397 * (k % 11));
    SoftmaxState part = SoftmaxEmpty();
    for (int64_t j = begin; j < end; ++j) part = SoftmaxAdd(part, logits[j]);
    merged = SoftmaxMerge(merged, part);
    begin = end;
  }
  const std::vector<double> ld = ToDouble(logits);
  double ref_loss = 0.0;
  reference::CrossEntropyForward(ld.data(), &label, &ref_loss, 1, vocab, kIgnoreIndex);
  EXPECT_NEAR(SoftmaxLse(whole) - logits[label], ref_loss, 1e-4);
  EXPECT_NEAR(SoftmaxLse(merged) - logits[label], ref_loss, 1e-4);
  // Empty parts and -inf logits change nothing.
  EXPECT_EQ(SoftmaxLse(SoftmaxMerge(SoftmaxEmpty(), merged)), SoftmaxLse(merged));
  EXPECT_EQ(SoftmaxLse(SoftmaxAdd(merged, -INFINITY)), SoftmaxLse(merged));
  EXPECT_TRUE(std::isinf(SoftmaxLse(SoftmaxEmpty())));

  const float lse = SoftmaxLse(merged);
  std::vector<float> dlogits(vocab);
  for (int64_t j = 0; j < vocab; ++j) {
    dlogits[j] = CrossEntropyGrad(logits[j], lse, j == label, 0.25f);
  }
  std::vector<double> ref_d(vocab);
  reference::CrossEntropyBackward(ld.data(), &label, 0.25, ref_d.data(), 1, vocab, kIgnoreIndex);
  EXPECT_LT(MaxRelError(dlogits, ref_d), 1e-5);
}

}  // namespace
}  // namespace qtrain::kernels::math
