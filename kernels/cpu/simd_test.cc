// The vector exp and its scalar twin against std::exp: relative error over the normal range,
// zero/denormal results below it, saturation above, -inf and NaN.
#include "kernels/cpu/simd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace qtrain::kernels::cpu::simd {
namespace {

std::vector<float> Inputs() {
  std::vector<float> x;
  for (float v = -110.0f; v <= 95.0f; v += 0.0137f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 88.0f, -87.5f, -103.9f, -104.0f}) x.push_back(v);
  return x;
}

void CheckAgainstStd(float x, float got) {
  const double want = std::exp(static_cast<double>(std::min(x, kExpMax)));
  if (want >= std::numeric_limits<float>::min()) {
    EXPECT_NEAR(got, want, 3e-7 * want) << "x = " << x;
  } else {  // denormal or zero: absolute error within a few denormal steps
    EXPECT_NEAR(got, want, 4 * std::numeric_limits<float>::denorm_min()) << "x = " << x;
  }
}

TEST(SimdExpTest, ScalarMatchesStdExp) {
  for (float x : Inputs()) CheckAgainstStd(x, Exp(x));
  EXPECT_EQ(Exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(std::isnan(Exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(Exp(std::numeric_limits<float>::infinity())));
}

#ifdef QTRAIN_HAVE_AVX512_PATH
QTRAIN_AVX512 void Exp16Over(const std::vector<float>& in, std::vector<float>& out) {
  for (size_t i = 0; i < in.size(); i += 16) {
    const __mmask16 m = FirstLanes(static_cast<int64_t>(in.size() - i));
    _mm512_mask_storeu_ps(out.data() + i, m, Exp16(_mm512_maskz_loadu_ps(m, in.data() + i)));
  }
}

TEST(SimdExpTest, VectorMatchesStdExp) {
  if (!UseAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::vector<float> in = Inputs();
  in.push_back(-std::numeric_limits<float>::infinity());
  in.push_back(std::numeric_limits<float>::quiet_NaN());
  in.push_back(std::numeric_limits<float>::infinity());
  std::vector<float> out(in.size());
  Exp16Over(in, out);
  for (size_t i = 0; i + 3 < in.size(); ++i) CheckAgainstStd(in[i], out[i]);
  EXPECT_EQ(out[in.size() - 3], 0.0f);
  EXPECT_TRUE(std::isnan(out[in.size() - 2]));
  EXPECT_TRUE(std::isfinite(out[in.size() - 1]));
}
#endif

}  // namespace
}  // namespace qtrain::kernels::cpu::simd
