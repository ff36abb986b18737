// The CPU backend's typed interface: Cast, and bf16 tensors through the fp32 kernels (fp32 math
// over bf16-rounded storage), with the one-dtype rule enforced.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/element_math.h"
#include "kernels/ops.h"

namespace qtrain::kernels {
namespace {

std::vector<float> Ramp(int64_t n, float scale, float offset) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * float(i) + offset) * scale;
  return v;
}

std::vector<Bf16> ToBf16(const std::vector<float>& v) {
  std::vector<Bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) math::Store(v[i], out[i]);
  return out;
}

std::vector<float> ToFloat(const std::vector<Bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = math::ToFloat(v[i]);
  return out;
}

TEST(Bf16Test, CastRoundsToNearestEvenAndWidensExactly) {
  Backend& be = CpuBackend();
  const std::vector<float> x = {1.0f, 1.00390625f, 1.01171875f, -3.3e38f, NAN, 0.0f, -0.0f, 7e-39f};
  std::vector<Bf16> narrow(x.size());
  ASSERT_TRUE(be.Cast(x.data(), narrow.data(), int64_t(x.size())).ok());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(narrow[i].bits, math::Bf16FromFloat(x[i])) << i;
  }
  EXPECT_EQ(narrow[1].bits, 0x3f80);  // a tie rounds to even
  EXPECT_EQ(narrow[2].bits, 0x3f82);  // a tie rounds to even (up)
  std::vector<float> wide(x.size());
  ASSERT_TRUE(be.Cast(narrow.data(), wide.data(), int64_t(x.size())).ok());
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(wide[i]));
    } else {
      EXPECT_EQ(wide[i], math::FloatFromBf16(narrow[i].bits)) << i;
    }
  }
  // Overlap and bad sizes are errors that touch nothing.
  std::vector<float> buf(8, 2.0f);
  const OpStatus overlap = be.Cast(buf.data(), Tensor(buf.data() + 2, DType::kBfloat16), 4);
  EXPECT_FALSE(overlap.ok());
  EXPECT_NE(overlap.message().find("overlaps"), std::string::npos) << overlap.message();
  EXPECT_FALSE(be.Cast(buf.data(), narrow.data(), -1).ok());
  EXPECT_EQ(buf, std::vector<float>(8, 2.0f));
}

TEST(Bf16Test, FillAndScaleRoundToBf16) {
  Backend& be = CpuBackend();
  std::vector<Bf16> x(5);
  ASSERT_TRUE(be.Fill(x.data(), 5, 1.00390625f).ok());
  EXPECT_EQ(ToFloat(x), std::vector<float>(5, 1.0f));
  ASSERT_TRUE(be.Scale(x.data(), 5, 3.0f).ok());
  EXPECT_EQ(ToFloat(x), std::vector<float>(5, 3.0f));
}

// A bf16 linear layer is the fp32 one over the rounded inputs, its output rounded once.
TEST(Bf16Test, LinearForwardIsFp32MathOverBf16Storage) {
  Backend& be = CpuBackend();
  const int64_t rows = 5, in = 12, out = 7;
  const auto x = ToBf16(Ramp(rows * in, 1.0f, 0.1f));
  const auto w = ToBf16(Ramp(out * in, 0.3f, 0.7f));
  const auto bias = ToBf16(Ramp(out, 0.2f, 1.3f));
  std::vector<Bf16> y(static_cast<size_t>(rows * out));
  ASSERT_TRUE(be.LinearForward(x.data(), w.data(), bias.data(), y.data(), rows, in, out).ok());
  std::vector<float> want(y.size());
  const auto xf = ToFloat(x), wf = ToFloat(w), bf = ToFloat(bias);
  ASSERT_TRUE(be.LinearForward(xf.data(), wf.data(), bf.data(), want.data(), rows, in, out).ok());
  EXPECT_EQ(ToFloat(y), ToFloat(ToBf16(want)));
}

// Backward accumulates into bf16 gradients: they start from their values, and da == db gets
// dout twice, as in fp32.
TEST(Bf16Test, BackwardAccumulatesIntoBf16Gradients) {
  Backend& be = CpuBackend();
  const int64_t n = 9;
  const auto dout = ToBf16(Ramp(n, 1.0f, 0.5f));
  auto grad = ToBf16(Ramp(n, 2.0f, 1.5f));
  const std::vector<float> start = ToFloat(grad);
  ASSERT_TRUE(be.ResidualBackward(dout.data(), grad.data(), grad.data(), n).ok());
  const std::vector<float> d = ToFloat(dout);
  for (int64_t i = 0; i < n; ++i) {
    // The fp32 kernel adds dout twice into one fp32 copy; the sum is rounded once.
    EXPECT_EQ(math::ToFloat(grad[i]),
              math::FloatFromBf16(math::Bf16FromFloat(start[i] + d[i] + d[i])))
        << i;
  }
}

TEST(Bf16Test, TheTensorsOfOneOpShareOneDtype) {
  Backend& be = CpuBackend();
  std::vector<float> a(4, 1.0f), out(4, 0.0f);
  std::vector<Bf16> b(4);
  const OpStatus mixed = be.ResidualForward(a.data(), b.data(), out.data(), 4);
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.message().find("share one dtype"), std::string::npos) << mixed.message();
  EXPECT_NE(mixed.message().find("b is bf16"), std::string::npos) << mixed.message();
  EXPECT_EQ(out, std::vector<float>(4, 0.0f));
  const OpStatus unknown = be.Fill(Tensor(a.data(), static_cast<DType>(7)), 4, 0.0f);
  EXPECT_FALSE(unknown.ok());
  EXPECT_NE(unknown.message().find("unknown dtype"), std::string::npos) << unknown.message();
}

}  // namespace
}  // namespace qtrain::kernels
