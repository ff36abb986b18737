// Embedding, RMSNorm, RoPE, SwiGLU, residual add and cross-entropy on the CPU backend:
// (1) the double-precision reference backward matches central finite differences of the
// reference forward; (2) the fp32 CPU op matches the reference, forward and backward; (3) a
// directional finite difference of the fp32 CPU op itself matches its backward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"
#include "kernels/reference/reference_ops.h"
#include "kernels/rope_tables.h"

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

constexpr double kFdTolerance = 1e-6;      // double reference vs central differences
constexpr double kFp32Tolerance = 2e-5;    // fp32 CPU op vs double reference
constexpr double kFp32FdTolerance = 2e-3;  // fp32 CPU op vs its own directional difference

TEST(EmbeddingTest, MatchesReferenceAndScatterAddsRepeatedIds) {
  Backend& be = CpuBackend();
  const int64_t vocab = 9, dim = 10, rows = 7;
  const std::vector<int32_t> ids = {3, 0, 8, 3, 3, 5, 0};
  const std::vector<float> table = RandomFloats(vocab * dim, 1);
  const std::vector<float> dout = RandomFloats(rows * dim, 2);

  std::vector<float> out(rows * dim);
  ASSERT_OP_OK(be.EmbeddingForward(ids.data(), table.data(), out.data(), rows, vocab, dim));
  std::vector<float> want(rows * dim);
  ref::EmbeddingForward(ids.data(), table.data(), want.data(), rows, dim);
  EXPECT_EQ(out, want);

  std::vector<float> dtable(vocab * dim, 0.5f);  // accumulates on top of what is there
  ASSERT_OP_OK(be.EmbeddingBackward(ids.data(), dout.data(), dtable.data(), rows, vocab, dim));
  std::vector<double> dtable_ref(vocab * dim, 0.5);
  ref::EmbeddingBackward(ids.data(), ToDouble(dout).data(), dtable_ref.data(), rows, dim);
  EXPECT_LT(MaxRelError(dtable, dtable_ref), kFp32Tolerance);
  // Row 3 got three contributions, row 1 none.
  EXPECT_NEAR(dtable[3 * dim], 0.5f + dout[0] + dout[3 * dim] + dout[4 * dim], 1e-6);
  EXPECT_EQ(dtable[1 * dim], 0.5f);
}

TEST(EmbeddingTest, RejectsIdsOutOfRange) {
  Backend& be = CpuBackend();
  std::vector<float> table(4 * 2), out(2 * 2, 7.0f);
  const std::vector<int32_t> bad = {1, 4};
  const OpStatus st = be.EmbeddingForward(bad.data(), table.data(), out.data(), 2, 4, 2);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("id 4"), std::string::npos) << st.message();
  EXPECT_EQ(out[0], 7.0f);  // untouched
  const std::vector<int32_t> negative = {-1, 0};
  EXPECT_FALSE(be.EmbeddingBackward(negative.data(), out.data(), table.data(), 2, 4, 2).ok());
}

TEST(RmsNormTest, GradientsMatchFiniteDifferencesAndReference) {
  Backend& be = CpuBackend();
  const int64_t rows = 7, dim = 10;
  const float eps = 1e-6f;
  std::vector<float> x = RandomFloats(rows * dim, 3, -2.0f, 2.0f);
  std::vector<float> w = RandomFloats(dim, 4, 0.5f, 1.5f);
  const std::vector<float> dout = RandomFloats(rows * dim, 5);

  // (1) double reference against finite differences.
  std::vector<double> xd = ToDouble(x), wd = ToDouble(w), outd(rows * dim), rstdd(rows);
  auto ref_loss = [&] {
    ref::RmsNormForward<double>(xd.data(), wd.data(), eps, outd.data(), rstdd.data(), rows, dim);
    return WeightedSum(outd, dout);
  };
  ref_loss();
  std::vector<double> dxd(rows * dim, 0.0), dwd(dim, 0.0);
  ref::RmsNormBackward<double>(ToDouble(dout).data(), xd.data(), wd.data(), rstdd.data(),
                               dxd.data(), dwd.data(), rows, dim);
  const double fd_x = FiniteDifferenceError(ref_loss, xd, dxd);
  const double fd_w = FiniteDifferenceError(ref_loss, wd, dwd);
  ReportError("rmsnorm ref dx vs FD", fd_x);
  ReportError("rmsnorm ref dweight vs FD", fd_w);
  EXPECT_LT(fd_x, kFdTolerance);
  EXPECT_LT(fd_w, kFdTolerance);

  // (2) fp32 CPU op against the reference.
  std::vector<float> out(rows * dim), rstd(rows);
  ASSERT_OP_OK(be.RmsNormForward(x.data(), w.data(), eps, out.data(), rstd.data(), rows, dim));
  ref_loss();
  EXPECT_LT(MaxRelError(out, outd), kFp32Tolerance);
  std::vector<float> dx(rows * dim, 0.0f), dw(dim, 0.0f);
  ASSERT_OP_OK(be.RmsNormBackward(dout.data(), x.data(), w.data(), rstd.data(), dx.data(),
                                  dw.data(), rows, dim));
  EXPECT_LT(MaxRelError(dx, dxd), kFp32Tolerance);
  EXPECT_LT(MaxRelError(dw, dwd), kFp32Tolerance);

  // (3) fp32 op against its own directional difference.
  auto cpu_loss = [&] {
    std::vector<float> y(rows * dim), r(rows);
    EXPECT_TRUE(be.RmsNormForward(x.data(), w.data(), eps, y.data(), r.data(), rows, dim).ok());
    return WeightedSum(y, dout);
  };
  const double dir_x = DirectionalFdError(cpu_loss, x, dx, 6);
  const double dir_w = DirectionalFdError(cpu_loss, w, dw, 7);
  ReportError("rmsnorm fp32 directional FD (x, w)", std::max(dir_x, dir_w));
  EXPECT_LT(dir_x, kFp32FdTolerance);
  EXPECT_LT(dir_w, kFp32FdTolerance);

  // Optional gradients: dweight only leaves dx alone.
  std::vector<float> dw_only(dim, 0.0f);
  ASSERT_OP_OK(be.RmsNormBackward(dout.data(), x.data(), w.data(), rstd.data(), nullptr,
                                  dw_only.data(), rows, dim));
  EXPECT_EQ(dw_only, dw);
}

TEST(RmsNormTest, RejectsBadShapes) {
  Backend& be = CpuBackend();
  std::vector<float> x(4), w(2), out(4), rstd(2);
  EXPECT_FALSE(be.RmsNormForward(x.data(), w.data(), 1e-6f, out.data(), rstd.data(), 2, 0).ok());
  EXPECT_FALSE(be.RmsNormForward(x.data(), w.data(), 1e-6f, out.data(), rstd.data(), -1, 2).ok());
  EXPECT_FALSE(be.RmsNormForward(nullptr, w.data(), 1e-6f, out.data(), rstd.data(), 2, 2).ok());
}

struct RopeCase {
  const char* name;
  bool yarn;
  bool explicit_positions;
};

class RopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeTest, GradientsMatchFiniteDifferencesAndReference) {
  const RopeCase& c = GetParam();
  Backend& be = CpuBackend();
  const int64_t B = 2, T = 5, H = 3, D = 8, past = 3;
  RopeConfig config;
  config.head_dim = D;
  config.theta = 10000.0;
  if (c.yarn) {  // L0 small enough that the ramp falls inside the 4 pairs
    config.yarn = true;
    config.factor = 4.0;
    config.original_max_position_embeddings = 64;
  }
  RopeTables tables;
  ASSERT_OP_OK(ComputeRopeTables(config, &tables));
  if (c.yarn) {
    EXPECT_GT(tables.attention_factor, 1.0f);
  } else {
    EXPECT_EQ(tables.attention_factor, 1.0f);
  }
  std::vector<int32_t> positions(B * T);
  for (int64_t i = 0; i < B * T; ++i) {
    positions[i] = c.explicit_positions ? static_cast<int32_t>((i * 7) % 11 + 1000)
                                        : static_cast<int32_t>(past + i % T);
  }
  RopeShape shape{.batch = B,
                  .seq_len = T,
                  .num_heads = H,
                  .head_dim = D,
                  .past_len = past,
                  .positions = c.explicit_positions ? positions.data() : nullptr};
  const int64_t n = B * T * H * D;
  std::vector<float> x = RandomFloats(n, 11);
  const std::vector<float> dy = RandomFloats(n, 12);
  const float af = tables.attention_factor;
  const float* inv = tables.inv_freq.data();

  std::vector<double> xd = ToDouble(x), yd(n);
  auto ref_loss = [&] {
    ref::RopeForward<double>(xd.data(), yd.data(), B * T, H, D, positions.data(), inv, af);
    return WeightedSum(yd, dy);
  };
  std::vector<double> dxd(n, 0.0);
  ref::RopeBackward<double>(ToDouble(dy).data(), dxd.data(), B * T, H, D, positions.data(), inv,
                            af);
  const double fd = FiniteDifferenceError(ref_loss, xd, dxd);
  ReportError(std::string("rope ref dx vs FD, ") + c.name, fd);
  EXPECT_LT(fd, kFdTolerance);

  std::vector<float> y(n);
  ASSERT_OP_OK(be.RopeForward(x.data(), y.data(), shape, inv, af));
  ref_loss();
  EXPECT_LT(MaxRelError(y, yd), kFp32Tolerance);
  std::vector<float> in_place = x;
  ASSERT_OP_OK(be.RopeForward(in_place.data(), in_place.data(), shape, inv, af));
  EXPECT_EQ(in_place, y);

  std::vector<float> dx(n, 0.0f);
  ASSERT_OP_OK(be.RopeBackward(dy.data(), dx.data(), shape, inv, af));
  EXPECT_LT(MaxRelError(dx, dxd), kFp32Tolerance);
  auto cpu_loss = [&] {
    std::vector<float> out(n);
    EXPECT_TRUE(be.RopeForward(x.data(), out.data(), shape, inv, af).ok());
    return WeightedSum(out, dy);
  };
  const double dir = DirectionalFdError(cpu_loss, x, dx, 13);
  ReportError(std::string("rope fp32 directional FD, ") + c.name, dir);
  EXPECT_LT(dir, kFp32FdTolerance);
}

INSTANTIATE_TEST_SUITE_P(Variants, RopeTest,
                         ::testing::Values(RopeCase{"plain", false, false},
                                           RopeCase{"yarn", true, false},
                                           RopeCase{"yarn_positions", true, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(RopeTest, PositionZeroIsIdentityTimesAttentionFactor) {
  Backend& be = CpuBackend();
  const std::vector<float> inv = {1.0f, 0.1f};
  const std::vector<float> x = {1, 2, 3, 4};
  std::vector<float> y(4);
  RopeShape shape{.batch = 1, .seq_len = 1, .num_heads = 1, .head_dim = 4};
  ASSERT_OP_OK(be.RopeForward(x.data(), y.data(), shape, inv.data(), 1.5f));
  EXPECT_EQ(y, (std::vector<float>{1.5f, 3.0f, 4.5f, 6.0f}));
  shape.head_dim = 3;
  EXPECT_FALSE(be.RopeForward(x.data(), y.data(), shape, inv.data(), 1.0f).ok());
  shape.head_dim = 4;
  EXPECT_FALSE(be.RopeBackward(y.data(), y.data(), shape, inv.data(), 1.0f).ok());  // aliasing
}

TEST(SwigluTest, GradientsMatchFiniteDifferencesAndReference) {
  Backend& be = CpuBackend();
  const int64_t rows = 3, dim = 11, n = rows * dim;
  std::vector<float> gate = RandomFloats(n, 21, -4.0f, 4.0f);
  std::vector<float> up = RandomFloats(n, 22);
  const std::vector<float> dout = RandomFloats(n, 23);

  std::vector<double> gd = ToDouble(gate), ud = ToDouble(up), outd(n);
  auto ref_loss = [&] {
    ref::SwigluForward<double>(gd.data(), ud.data(), outd.data(), n);
    return WeightedSum(outd, dout);
  };
  std::vector<double> dgd(n, 0.0), dud(n, 0.0);
  ref::SwigluBackward<double>(ToDouble(dout).data(), gd.data(), ud.data(), dgd.data(), dud.data(),
                              n);
  const double fd =
      std::max(FiniteDifferenceError(ref_loss, gd, dgd), FiniteDifferenceError(ref_loss, ud, dud));
  ReportError("swiglu ref dgate/dup vs FD", fd);
  EXPECT_LT(fd, kFdTolerance);

  std::vector<float> out(n), dgate(n, 0.0f), dup(n, 0.0f);
  ASSERT_OP_OK(be.SwigluForward(gate.data(), up.data(), out.data(), rows, dim));
  ref_loss();
  EXPECT_LT(MaxRelError(out, outd), kFp32Tolerance);
  ASSERT_OP_OK(
      be.SwigluBackward(dout.data(), gate.data(), up.data(), dgate.data(), dup.data(), rows, dim));
  EXPECT_LT(MaxRelError(dgate, dgd), kFp32Tolerance);
  EXPECT_LT(MaxRelError(dup, dud), kFp32Tolerance);
  auto cpu_loss = [&] {
    std::vector<float> y(n);
    EXPECT_TRUE(be.SwigluForward(gate.data(), up.data(), y.data(), rows, dim).ok());
    return WeightedSum(y, dout);
  };
  const double dir = std::max(DirectionalFdError(cpu_loss, gate, dgate, 24),
                              DirectionalFdError(cpu_loss, up, dup, 25));
  ReportError("swiglu fp32 directional FD", dir);
  EXPECT_LT(dir, kFp32FdTolerance);
}

TEST(ResidualTest, AddsAndAccumulatesGradients) {
  Backend& be = CpuBackend();
  const std::vector<float> a = {1, 2, 3}, b = {10, 20, 30}, dout = {0.5f, -1, 2};
  std::vector<float> out(3);
  ASSERT_OP_OK(be.ResidualForward(a.data(), b.data(), out.data(), 3));
  EXPECT_EQ(out, (std::vector<float>{11, 22, 33}));
  std::vector<float> da = {1, 1, 1}, db(3, 0.0f);
  ASSERT_OP_OK(be.ResidualBackward(dout.data(), da.data(), db.data(), 3));
  EXPECT_EQ(da, (std::vector<float>{1.5f, 0, 3}));
  EXPECT_EQ(db, dout);
  std::vector<float> both(3, 0.0f);  // the same buffer for both: two contributions
  ASSERT_OP_OK(be.ResidualBackward(dout.data(), both.data(), both.data(), 3));
  EXPECT_EQ(both, (std::vector<float>{1, -2, 4}));
  EXPECT_FALSE(be.ResidualBackward(da.data(), da.data(), nullptr, 3).ok());
}

TEST(CrossEntropyTest, GradientsMatchFiniteDifferencesAndReference) {
  Backend& be = CpuBackend();
  const int64_t rows = 6, vocab = 13;
  const std::vector<int32_t> labels = {4, kIgnoreIndex, 0, 12, kIgnoreIndex, 7};
  std::vector<float> logits = RandomFloats(rows * vocab, 31, -3.0f, 3.0f);
  const int64_t valid = 4;
  const float scale = 1.0f / valid;

  std::vector<double> zd = ToDouble(logits), lossd(rows);
  auto ref_loss = [&] {
    ref::CrossEntropyForward<double>(zd.data(), labels.data(), lossd.data(), rows, vocab,
                                     kIgnoreIndex);
    double s = 0;
    for (double l : lossd) s += l;
    return s * scale;
  };
  const double mean_ref = ref_loss();
  std::vector<double> dzd(rows * vocab);
  ref::CrossEntropyBackward<double>(zd.data(), labels.data(), scale, dzd.data(), rows, vocab,
                                    kIgnoreIndex);
  const double fd = FiniteDifferenceError(ref_loss, zd, dzd, 200);
  ReportError("cross-entropy ref dlogits vs FD", fd);
  EXPECT_LT(fd, kFdTolerance);

  std::vector<float> losses(rows), lse(rows);
  double loss_sum = 0;
  int64_t num_valid = 0;
  ASSERT_OP_OK(be.CrossEntropyForward(logits.data(), labels.data(), losses.data(), lse.data(),
                                      &loss_sum, &num_valid, rows, vocab, kIgnoreIndex));
  EXPECT_EQ(num_valid, valid);
  EXPECT_NEAR(loss_sum / num_valid, mean_ref, 1e-5 * mean_ref);
  EXPECT_LT(MaxRelError(losses, lossd), kFp32Tolerance);
  EXPECT_EQ(losses[1], 0.0f);
  EXPECT_EQ(losses[4], 0.0f);

  std::vector<float> dz(rows * vocab, 123.0f);  // overwritten, not accumulated
  ASSERT_OP_OK(be.CrossEntropyBackward(logits.data(), labels.data(), lse.data(), scale, dz.data(),
                                       rows, vocab, kIgnoreIndex));
  EXPECT_LT(MaxRelError(dz, dzd), kFp32Tolerance);
  for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(dz[1 * vocab + j], 0.0f);
  std::vector<float> in_place = logits;
  ASSERT_OP_OK(be.CrossEntropyBackward(in_place.data(), labels.data(), lse.data(), scale,
                                       in_place.data(), rows, vocab, kIgnoreIndex));
  EXPECT_EQ(in_place, dz);

  auto cpu_loss = [&] {
    std::vector<float> l(rows), s(rows);
    double sum = 0;
    EXPECT_TRUE(be.CrossEntropyForward(logits.data(), labels.data(), l.data(), s.data(), &sum,
                                       nullptr, rows, vocab, kIgnoreIndex)
                    .ok());
    return sum * scale;
  };
  const double dir = DirectionalFdError(cpu_loss, logits, dz, 32);
  ReportError("cross-entropy fp32 directional FD", dir);
  EXPECT_LT(dir, kFp32FdTolerance);
}

// The fused op against the two-pass ops: equal lse and losses (the same passes), dlogits equal up
// to rounding; over a vocabulary of several summation chunks, with -inf logits, an all -inf row
// and a +inf row, in place and not.
TEST(CrossEntropyTest, ForwardBackwardMatchesTheTwoOps) {
  Backend& be = CpuBackend();
  const int64_t rows = 7, vocab = 5000;
  std::vector<float> logits = RandomFloats(rows * vocab, 41, -8.0f, 8.0f);
  const float inf = std::numeric_limits<float>::infinity();
  logits[0 * vocab + 17] = -inf;
  for (int64_t j = 0; j < vocab; ++j) logits[3 * vocab + j] = -inf;
  logits[5 * vocab + 4000] = inf;
  const std::vector<int32_t> labels = {4999, kIgnoreIndex, 0, 2, 2500, 4000, kIgnoreIndex};
  const float scale = 0.2f;
  std::vector<float> losses(rows), lse(rows), dz(rows * vocab, 9.0f);
  double sum = 0;
  int64_t valid = 0;
  ASSERT_OP_OK(be.CrossEntropyForward(logits.data(), labels.data(), losses.data(), lse.data(), &sum,
                                      &valid, rows, vocab, kIgnoreIndex));
  ASSERT_OP_OK(be.CrossEntropyBackward(logits.data(), labels.data(), lse.data(), scale, dz.data(),
                                       rows, vocab, kIgnoreIndex));
  for (bool in_place : {false, true}) {
    SCOPED_TRACE(in_place ? "in place" : "separate output");
    std::vector<float> input = logits, fused_losses(rows), fused_lse(rows);
    std::vector<float> out(rows * vocab, 9.0f);
    float* dlogits = in_place ? input.data() : out.data();
    double fused_sum = 0;
    int64_t fused_valid = 0;
    ASSERT_OP_OK(be.CrossEntropyForwardBackward(input.data(), labels.data(), scale,
                                                fused_losses.data(), fused_lse.data(), &fused_sum,
                                                &fused_valid, dlogits, rows, vocab, kIgnoreIndex));
    // Bitwise (the rows of infinities give NaN losses, which == would call unequal).
    EXPECT_EQ(std::memcmp(fused_lse.data(), lse.data(), rows * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(fused_losses.data(), losses.data(), rows * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(&fused_sum, &sum, sizeof(sum)), 0);
    EXPECT_EQ(fused_valid, valid);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < vocab; ++j) {
        const float want = dz[r * vocab + j], got = dlogits[r * vocab + j];
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got)) << r << "," << j;
        } else {
          ASSERT_NEAR(got, want, 2e-6f * std::abs(want) + 1e-12f) << r << "," << j;
        }
      }
    }
    for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(dlogits[1 * vocab + j], 0.0f);  // ignored
  }
}

TEST(CrossEntropyTest, PerTokenLogprobsAndErrors) {
  Backend& be = CpuBackend();
  // Uniform logits over 4 classes: every logprob is -log 4.
  const std::vector<float> logits(2 * 4, 0.25f);
  const std::vector<int32_t> labels = {3, 0};
  std::vector<float> losses(2), lse(2);
  int64_t num_valid = -1;
  ASSERT_OP_OK(be.CrossEntropyForward(logits.data(), labels.data(), losses.data(), lse.data(),
                                      nullptr, &num_valid, 2, 4, kIgnoreIndex));
  EXPECT_NEAR(-losses[0], -std::log(4.0), 1e-6);
  EXPECT_NEAR(lse[1], 0.25 + std::log(4.0), 1e-6);
  const std::vector<int32_t> all_ignored = {kIgnoreIndex, kIgnoreIndex};
  double sum = -1;
  ASSERT_OP_OK(be.CrossEntropyForward(logits.data(), all_ignored.data(), losses.data(), lse.data(),
                                      &sum, &num_valid, 2, 4, kIgnoreIndex));
  EXPECT_EQ(num_valid, 0);
  EXPECT_EQ(sum, 0.0);
  const std::vector<int32_t> out_of_range = {4, 0};
  const OpStatus st = be.CrossEntropyForward(logits.data(), out_of_range.data(), losses.data(),
                                             lse.data(), nullptr, nullptr, 2, 4, kIgnoreIndex);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("label 4"), std::string::npos) << st.message();
  // A custom ignore index.
  const std::vector<int32_t> custom = {-1, 2};
  ASSERT_OP_OK(be.CrossEntropyForward(logits.data(), custom.data(), losses.data(), lse.data(),
                                      nullptr, &num_valid, 2, 4, /*ignore_index=*/-1));
  EXPECT_EQ(num_valid, 1);
}

}  // namespace
}  // namespace qtrain::kernels
