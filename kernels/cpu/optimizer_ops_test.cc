// AdamW against hand-computed steps, the deterministic sum of squares, and the memory utilities.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"

namespace qtrain::kernels {
namespace {

using testing::RandomFloats;

TEST(AdamWTest, MatchesHandComputedSteps) {
  Backend& be = CpuBackend();
  // Two steps of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
  // from p = 1 with gradients 0.5 then -1, computed by hand in double:
  //   step 1: p = 0.999 - 1.0 * 0.05 / (0.5 + 1e-8) = 0.899000002
  //   step 2: m = -0.055, v = 0.00124975, p = 0.93471135424
  float p = 1.0f, m = 0.0f, v = 0.0f;
  AdamWParams params{.lr = 0.1,
                     .beta1 = 0.9,
                     .beta2 = 0.999,
                     .eps = 1e-8,
                     .weight_decay = 0.01,
                     .apply_weight_decay = true,
                     .step = 1};
  const float g1 = 0.5f, g2 = -1.0f;
  ASSERT_OP_OK(be.AdamWStep(&p, &g1, &m, &v, 1, params));
  EXPECT_NEAR(p, 0.899000002, 1e-6);
  EXPECT_NEAR(m, 0.05, 1e-7);
  EXPECT_NEAR(v, 0.00025, 1e-9);
  params.step = 2;
  ASSERT_OP_OK(be.AdamWStep(&p, &g2, &m, &v, 1, params));
  EXPECT_NEAR(p, 0.93471135424, 1e-6);
  EXPECT_NEAR(m, -0.055, 1e-7);
  EXPECT_NEAR(v, 0.00124975, 1e-9);
}

TEST(AdamWTest, DecayFlagAndGradScale) {
  Backend& be = CpuBackend();
  // Without decay, the first step moves by exactly lr * sign(g) (up to eps).
  std::vector<float> p = {1.0f, -2.0f}, m(2, 0.0f), v(2, 0.0f);
  const std::vector<float> g = {4.0f, -0.5f};
  AdamWParams params{.lr = 0.1, .weight_decay = 0.5, .apply_weight_decay = false};
  ASSERT_OP_OK(be.AdamWStep(p.data(), g.data(), m.data(), v.data(), 2, params));
  EXPECT_NEAR(p[0], 0.9f, 1e-6);
  EXPECT_NEAR(p[1], -1.9f, 1e-6);
  // With decay: p *= 1 - lr * wd first.
  std::vector<float> q = {1.0f}, mq(1, 0.0f), vq(1, 0.0f);
  params.apply_weight_decay = true;
  ASSERT_OP_OK(be.AdamWStep(q.data(), g.data(), mq.data(), vq.data(), 1, params));
  EXPECT_NEAR(q[0], 0.95f - 0.1f, 1e-6);
  // grad_scale scales the gradient before the moments.
  std::vector<float> r = {0.0f}, mr(1, 0.0f), vr(1, 0.0f);
  params.grad_scale = 0.25f;
  ASSERT_OP_OK(be.AdamWStep(r.data(), g.data(), mr.data(), vr.data(), 1, params));
  EXPECT_NEAR(mr[0], 0.1f * 4.0f * 0.25f, 1e-7);
  params.step = 0;
  EXPECT_FALSE(be.AdamWStep(r.data(), g.data(), mr.data(), vr.data(), 1, params).ok());
  params.step = 1;
  params.beta2 = 1.0;
  EXPECT_FALSE(be.AdamWStep(r.data(), g.data(), mr.data(), vr.data(), 1, params).ok());
}

TEST(SumOfSquaresTest, MatchesDoubleSumAndIsThreadCountIndependent) {
  Backend& be = CpuBackend();
  const std::vector<float> a = RandomFloats(100003, 61), b = RandomFloats(7, 62),
                           c = RandomFloats(20000, 63);
  const float* tensors[] = {a.data(), b.data(), nullptr, c.data()};
  const int64_t sizes[] = {100003, 7, 0, 20000};
  double want = 0;
  for (const auto* t : {&a, &b, &c})
    for (float x : *t) want += static_cast<double>(x) * x;
  const int default_threads = omp_get_max_threads();
  double got1 = 0, got2 = 0;
  omp_set_num_threads(1);
  ASSERT_OP_OK(be.SumOfSquares(tensors, sizes, 4, &got1));
  omp_set_num_threads(2);
  ASSERT_OP_OK(be.SumOfSquares(tensors, sizes, 4, &got2));
  omp_set_num_threads(default_threads);
  EXPECT_NEAR(got1, want, 1e-9 * want);
  EXPECT_EQ(got1, got2);
  const int64_t bad_sizes[] = {-1};
  EXPECT_FALSE(be.SumOfSquares(tensors, bad_sizes, 1, &got1).ok());
}

TEST(MemoryTest, AllocFillScaleCopy) {
  Backend& be = CpuBackend();
  float* x = static_cast<float*>(be.Alloc(10 * sizeof(float)));
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x) % 64, 0u);
  ASSERT_OP_OK(be.Fill(x, 10, 2.0f));
  ASSERT_OP_OK(be.Scale(x, 10, 1.5f));
  std::vector<float> host(10);
  ASSERT_OP_OK(be.CopyBackendToHost(host.data(), x, 10 * sizeof(float)));
  EXPECT_EQ(host, std::vector<float>(10, 3.0f));
  const std::vector<float> src = {1, 2, 3};
  ASSERT_OP_OK(be.CopyHostToBackend(x, src.data(), 3 * sizeof(float)));
  EXPECT_EQ(x[2], 3.0f);
  EXPECT_FALSE(be.Fill(x, -1, 0.0f).ok());
  be.Free(x);
  be.Free(nullptr);
  EXPECT_EQ(be.Alloc(0), nullptr);
  // Sizes whose rounding to the alignment would wrap fail instead of returning a tiny block.
  EXPECT_EQ(be.Alloc(SIZE_MAX), nullptr);
  EXPECT_EQ(be.Alloc(SIZE_MAX - 10), nullptr);
  EXPECT_EQ(be.name(), "cpu");
}

}  // namespace
}  // namespace qtrain::kernels
