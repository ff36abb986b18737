// Linear (with and without bias) and the tied LM head on the CPU backend: reference gradients
// against finite differences, the fp32 op against the reference, and the op's own directional
// finite difference.
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"
#include "kernels/reference/reference_ops.h"

namespace qtrain::kernels {
namespace {

namespace ref = reference;
using testing::DirectionalFdError;
using testing::FiniteDifferenceError;
using testing::MaxRelError;
using testing::RandomFloats;
using testing::ReportError;
using testing::ToDouble;
using testing::WeightedSum;

constexpr double kFdTolerance = 1e-6;
constexpr double kFp32Tolerance = 2e-5;
constexpr double kFp32FdTolerance = 2e-3;

class LinearTest : public ::testing::TestWithParam<bool> {};  // param: with bias

TEST_P(LinearTest, GradientsMatchFiniteDifferencesAndReference) {
  const bool with_bias = GetParam();
  Backend& be = CpuBackend();
  const int64_t rows = 5, in = 10, out = 7;
  std::vector<float> x = RandomFloats(rows * in, 41);
  std::vector<float> w = RandomFloats(out * in, 42);
  std::vector<float> b = RandomFloats(out, 43);
  const std::vector<float> dy = RandomFloats(rows * out, 44);
  const char* tag = with_bias ? "linear+bias" : "linear";

  std::vector<double> xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b), yd(rows * out);
  auto ref_loss = [&] {
    ref::LinearForward<double>(xd.data(), wd.data(), with_bias ? bd.data() : nullptr, yd.data(),
                               rows, in, out);
    return WeightedSum(yd, dy);
  };
  std::vector<double> dxd(rows * in, 0.0), dwd(out * in, 0.0), dbd(out, 0.0);
  ref::LinearBackward<double>(ToDouble(dy).data(), xd.data(), wd.data(), dxd.data(), dwd.data(),
                              dbd.data(), rows, in, out);
  double fd =
      std::max(FiniteDifferenceError(ref_loss, xd, dxd), FiniteDifferenceError(ref_loss, wd, dwd));
  if (with_bias) fd = std::max(fd, FiniteDifferenceError(ref_loss, bd, dbd));
  ReportError(std::string(tag) + " ref dx/dW/db vs FD", fd);
  EXPECT_LT(fd, kFdTolerance);

  std::vector<float> y(rows * out);
  ASSERT_OP_OK(be.LinearForward(x.data(), w.data(), with_bias ? b.data() : nullptr, y.data(), rows,
                                in, out));
  ref_loss();
  EXPECT_LT(MaxRelError(y, yd), kFp32Tolerance);

  // Gradients accumulate on top of existing contents.
  std::vector<float> dx(rows * in, 1.0f), dw(out * in, 1.0f), db(out, 1.0f);
  ASSERT_OP_OK(be.LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(),
                                 with_bias ? db.data() : nullptr, rows, in, out));
  for (double& g : dxd) g += 1.0;
  for (double& g : dwd) g += 1.0;
  for (double& g : dbd) g += 1.0;
  EXPECT_LT(MaxRelError(dx, dxd), kFp32Tolerance);
  EXPECT_LT(MaxRelError(dw, dwd), kFp32Tolerance);
  if (with_bias) {
    EXPECT_LT(MaxRelError(db, dbd), kFp32Tolerance);
  }
  for (float& g : dx) g -= 1.0f;
  for (float& g : dw) g -= 1.0f;
  for (float& g : db) g -= 1.0f;

  auto cpu_loss = [&] {
    std::vector<float> out_y(rows * out);
    EXPECT_TRUE(be.LinearForward(x.data(), w.data(), with_bias ? b.data() : nullptr, out_y.data(),
                                 rows, in, out)
                    .ok());
    return WeightedSum(out_y, dy);
  };
  double dir =
      std::max(DirectionalFdError(cpu_loss, x, dx, 45), DirectionalFdError(cpu_loss, w, dw, 46));
  if (with_bias) dir = std::max(dir, DirectionalFdError(cpu_loss, b, db, 47));
  ReportError(std::string(tag) + " fp32 directional FD", dir);
  EXPECT_LT(dir, kFp32FdTolerance);
}

INSTANTIATE_TEST_SUITE_P(Bias, LinearTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "WithBias" : "NoBias"; });

TEST(LinearTest, OptionalGradientsAndErrors) {
  Backend& be = CpuBackend();
  const std::vector<float> x = {1, 2}, w = {3, 4, 5, 6}, dy = {1, -1};  // rows 1, in 2, out 2
  std::vector<float> dw(4, 0.0f);
  ASSERT_OP_OK(
      be.LinearBackward(dy.data(), x.data(), w.data(), nullptr, dw.data(), nullptr, 1, 2, 2));
  EXPECT_EQ(dw, (std::vector<float>{1, 2, -1, -2}));
  std::vector<float> y(2);
  ASSERT_OP_OK(be.LinearForward(x.data(), w.data(), nullptr, y.data(), 1, 2, 2));
  EXPECT_EQ(y, (std::vector<float>{11, 17}));
  EXPECT_FALSE(be.LinearForward(x.data(), w.data(), nullptr, y.data(), 1, 0, 2).ok());
  EXPECT_FALSE(be.LinearForward(x.data(), nullptr, nullptr, y.data(), 1, 2, 2).ok());
  ASSERT_OP_OK(be.LinearForward(nullptr, nullptr, nullptr, nullptr, 0, 2, 2));  // empty batch
}

TEST(LmHeadTest, TiedGradientsMatchFiniteDifferencesAndAccumulateWithEmbedding) {
  Backend& be = CpuBackend();
  const int64_t rows = 4, vocab = 11, dim = 6;
  std::vector<float> y = RandomFloats(rows * dim, 51);
  std::vector<float> emb = RandomFloats(vocab * dim, 52);
  const std::vector<float> dlogits = RandomFloats(rows * vocab, 53);

  std::vector<double> yd = ToDouble(y), ed = ToDouble(emb), ld(rows * vocab);
  auto ref_loss = [&] {
    ref::LinearForward<double>(yd.data(), ed.data(), nullptr, ld.data(), rows, dim, vocab);
    return WeightedSum(ld, dlogits);
  };
  std::vector<double> dyd(rows * dim, 0.0), ded(vocab * dim, 0.0);
  ref::LinearBackward<double>(ToDouble(dlogits).data(), yd.data(), ed.data(), dyd.data(),
                              ded.data(), nullptr, rows, dim, vocab);
  const double fd =
      std::max(FiniteDifferenceError(ref_loss, yd, dyd), FiniteDifferenceError(ref_loss, ed, ded));
  ReportError("lm_head ref dy/dE vs FD", fd);
  EXPECT_LT(fd, kFdTolerance);

  std::vector<float> logits(rows * vocab);
  ASSERT_OP_OK(be.LmHeadForward(y.data(), emb.data(), logits.data(), rows, vocab, dim));
  ref_loss();
  EXPECT_LT(MaxRelError(logits, ld), kFp32Tolerance);

  // The tied table gets both the LM head's and the embedding lookup's gradient.
  std::vector<float> dy(rows * dim, 0.0f), demb(vocab * dim, 0.0f);
  ASSERT_OP_OK(be.LmHeadBackward(dlogits.data(), y.data(), emb.data(), dy.data(), demb.data(), rows,
                                 vocab, dim));
  EXPECT_LT(MaxRelError(dy, dyd), kFp32Tolerance);
  EXPECT_LT(MaxRelError(demb, ded), kFp32Tolerance);
  const std::vector<int32_t> ids = {2};
  const std::vector<float> dh0 = RandomFloats(dim, 54);
  const std::vector<float> demb_head = demb;
  ASSERT_OP_OK(be.EmbeddingBackward(ids.data(), dh0.data(), demb.data(), 1, vocab, dim));
  for (int64_t j = 0; j < dim; ++j)
    EXPECT_FLOAT_EQ(demb[2 * dim + j], demb_head[2 * dim + j] + dh0[j]);

  auto cpu_loss = [&] {
    std::vector<float> l(rows * vocab);
    EXPECT_TRUE(be.LmHeadForward(y.data(), emb.data(), l.data(), rows, vocab, dim).ok());
    return WeightedSum(l, dlogits);
  };
  const double dir = std::max(DirectionalFdError(cpu_loss, y, dy, 55),
                              DirectionalFdError(cpu_loss, emb, demb_head, 56));
  ReportError("lm_head fp32 directional FD", dir);
  EXPECT_LT(dir, kFp32FdTolerance);
}

// The LM head and the loss at Qwen2's real vocabulary (151,936: many summation chunks, GEMMs of
// column blocks), forward and backward, against the double-precision reference over the same
// inputs, element by element. A few rows keep it fast.
TEST(LmHeadTest, FullVocabularyLossForwardBackwardMatchesTheReference) {
  Backend& be = CpuBackend();
  const int64_t rows = 4, vocab = 151936, dim = 64;
  const std::vector<int32_t> labels = {0, static_cast<int32_t>(vocab - 1), kIgnoreIndex, 77777};
  const int64_t valid = 3;
  const float scale = 1.0f / valid;
  const std::vector<float> y = RandomFloats(rows * dim, 61);
  const std::vector<float> emb = RandomFloats(vocab * dim, 62, -0.5f, 0.5f);

  // Reference: logits, losses and d(mean loss)/d(logits), d/dy, d/dE in double.
  const std::vector<double> yd = ToDouble(y), ed = ToDouble(emb);
  std::vector<double> zd(rows * vocab), lossd(rows), dzd(rows * vocab);
  ref::LinearForward<double>(yd.data(), ed.data(), nullptr, zd.data(), rows, dim, vocab);
  ref::CrossEntropyForward<double>(zd.data(), labels.data(), lossd.data(), rows, vocab,
                                   kIgnoreIndex);
  ref::CrossEntropyBackward<double>(zd.data(), labels.data(), scale, dzd.data(), rows, vocab,
                                    kIgnoreIndex);
  std::vector<double> dyd(rows * dim, 0.0), ded(vocab * dim, 0.0);
  ref::LinearBackward<double>(dzd.data(), yd.data(), ed.data(), dyd.data(), ded.data(), nullptr,
                              rows, dim, vocab);

  std::vector<float> logits(rows * vocab);
  ASSERT_OP_OK(be.LmHeadForward(y.data(), emb.data(), logits.data(), rows, vocab, dim));
  EXPECT_LT(MaxRelError(logits, zd), kFp32Tolerance);
  std::vector<float> losses(rows), lse(rows);
  double loss_sum = 0;
  int64_t num_valid = 0;
  // In place, as the model runs it: the logits become their gradient.
  ASSERT_OP_OK(be.CrossEntropyForwardBackward(logits.data(), labels.data(), scale, losses.data(),
                                              lse.data(), &loss_sum, &num_valid, logits.data(),
                                              rows, vocab, kIgnoreIndex));
  EXPECT_EQ(num_valid, valid);
  double want_sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_NEAR(losses[r], lossd[r], 1e-5 * (1 + lossd[r])) << r;
    want_sum += lossd[r];
  }
  EXPECT_NEAR(loss_sum, want_sum, 1e-5 * want_sum);
  // Every softmax entry, however small, to a relative 1e-4 (plus the fp32 rounding of the -1).
  for (int64_t i = 0; i < rows * vocab; ++i) {
    ASSERT_NEAR(logits[i], dzd[i], 1e-4 * std::abs(dzd[i]) + 1e-7) << i / vocab << "," << i % vocab;
  }
  for (int64_t j = 0; j < vocab; ++j) ASSERT_EQ(logits[2 * vocab + j], 0.0f) << j;  // ignored

  std::vector<float> dy(rows * dim, 0.0f), demb(vocab * dim, 0.0f);
  ASSERT_OP_OK(be.LmHeadBackward(logits.data(), y.data(), emb.data(), dy.data(), demb.data(), rows,
                                 vocab, dim));
  EXPECT_LT(MaxRelError(dy, dyd), kFp32Tolerance);
  // Each embedding row's gradient against its own scale: most rows are only softmax mass.
  for (int64_t v = 0; v < vocab; ++v) {
    double row_scale = 1e-30, err = 0;
    for (int64_t j = 0; j < dim; ++j) {
      row_scale = std::max(row_scale, std::abs(ded[v * dim + j]));
      err = std::max(err, std::abs(demb[v * dim + j] - ded[v * dim + j]));
    }
    ASSERT_LT(err / row_scale, 1e-4) << "embedding row " << v;
  }
}

// OpenBLAS gives bitwise reproducible GEMMs for a fixed thread count (some of its kernels
// change the summation order with the thread count, so only runs at equal counts compare).
TEST(LinearTest, BitwiseIdenticalAcrossRunsAtAFixedThreadCount) {
  Backend& be = CpuBackend();
  const int64_t rows = 96, in = 80, out = 136;
  const std::vector<float> x = RandomFloats(rows * in, 61), w = RandomFloats(out * in, 62),
                           b = RandomFloats(out, 63), dy = RandomFloats(rows * out, 64);
  auto run = [&](int threads) {
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    std::vector<float> y(rows * out), dx(rows * in, 0.0f), dw(out * in, 0.0f), db(out, 0.0f);
    EXPECT_TRUE(be.LinearForward(x.data(), w.data(), b.data(), y.data(), rows, in, out).ok());
    EXPECT_TRUE(be.LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(),
                                  rows, in, out)
                    .ok());
    for (const auto* part : {&dx, &dw, &db}) y.insert(y.end(), part->begin(), part->end());
    return y;
  };
  const int default_threads = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    const std::vector<float> first = run(threads);
    EXPECT_EQ(run(threads), first) << threads << " threads";
  }
  openblas_set_num_threads(default_threads);
  omp_set_num_threads(default_threads);
}

}  // namespace
}  // namespace qtrain::kernels
