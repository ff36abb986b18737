// Tiled causal GQA attention on the CPU: equal to the naive full-matrix reference for GQA
// groups, odd head sizes, sequence lengths that are not tile multiples and KV-cache offsets;
// gradients against finite differences; decode rows equal to the rows of full attention;
// bitwise determinism across runs, thread counts and the two backward schedules.
#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <string>
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

struct AttentionCase {
  const char* name;
  int64_t batch, seq_len, past_len, heads, kv_heads, head_dim, extra_capacity;
};

AttentionShape ShapeOf(const AttentionCase& c) {
  return AttentionShape{.batch = c.batch,
                        .seq_len = c.seq_len,
                        .past_len = c.past_len,
                        .kv_capacity = c.past_len + c.seq_len + c.extra_capacity,
                        .num_heads = c.heads,
                        .num_kv_heads = c.kv_heads,
                        .head_dim = c.head_dim};
}

ref::AttentionDims DimsOf(const AttentionShape& s) {
  return {
      s.batch,     s.seq_len,      s.past_len, s.kv_rows(),
      s.num_heads, s.num_kv_heads, s.head_dim, 1.0 / std::sqrt(static_cast<double>(s.head_dim))};
}

// Inputs of one attention case; the unused cache rows beyond past+T hold garbage.
struct AttentionInputs {
  explicit AttentionInputs(const AttentionShape& s, uint32_t seed)
      : q(RandomFloats(s.batch * s.seq_len * s.num_heads * s.head_dim, seed, -2.0f, 2.0f)),
        k(RandomFloats(s.batch * s.kv_rows() * s.num_kv_heads * s.head_dim, seed + 1, -2.0f, 2.0f)),
        v(RandomFloats(s.batch * s.kv_rows() * s.num_kv_heads * s.head_dim, seed + 2)),
        dout(RandomFloats(q.size(), seed + 3)) {}
  std::vector<float> q, k, v, dout;
};

class AttentionTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(AttentionTest, TiledMatchesNaiveReferenceForEveryTileSize) {
  const AttentionShape shape = ShapeOf(GetParam());
  const AttentionInputs in(shape, 100);
  const ref::AttentionDims dims = DimsOf(shape);
  std::vector<double> o_ref(in.q.size()), lse_ref(shape.batch * shape.num_heads * shape.seq_len);
  ref::AttentionForward<double>(ToDouble(in.q).data(), ToDouble(in.k).data(), ToDouble(in.v).data(),
                                o_ref.data(), lse_ref.data(), dims);
  std::vector<double> dq_ref(in.q.size(), 0.0), dk_ref(in.k.size(), 0.0), dv_ref(in.v.size(), 0.0);
  ref::AttentionBackward<double>(ToDouble(in.q).data(), ToDouble(in.k).data(),
                                 ToDouble(in.v).data(), ToDouble(in.dout).data(), dq_ref.data(),
                                 dk_ref.data(), dv_ref.data(), dims);
  double worst = 0;
  for (int64_t tile : {int64_t{16}, int64_t{32}, int64_t{64}, int64_t{5}}) {
    SCOPED_TRACE("tile " + std::to_string(tile));
    std::vector<float> o(in.q.size()), lse(lse_ref.size());
    ASSERT_OP_OK(cpu::AttentionForwardTiled(in.q.data(), in.k.data(), in.v.data(), o.data(),
                                            lse.data(), shape, tile));
    std::vector<float> dq(in.q.size(), 0.0f), dk(in.k.size(), 0.0f), dv(in.v.size(), 0.0f);
    ASSERT_OP_OK(cpu::AttentionBackwardTiled(
        in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(), in.dout.data(), dq.data(),
        dk.data(), dv.data(), shape, tile, cpu::AttentionBackwardSchedule::kFused));
    // The split schedule computes the same operations in other work items: equal bits.
    std::vector<float> dq2(in.q.size(), 0.0f), dk2(in.k.size(), 0.0f), dv2(in.v.size(), 0.0f);
    ASSERT_OP_OK(cpu::AttentionBackwardTiled(
        in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(), in.dout.data(), dq2.data(),
        dk2.data(), dv2.data(), shape, tile, cpu::AttentionBackwardSchedule::kSplit));
    EXPECT_EQ(dq, dq2);
    EXPECT_EQ(dk, dk2);
    EXPECT_EQ(dv, dv2);
    // Gradients are compared relative to max(their scale, 1e-2): with a single visible key
    // (T1), P = 1 and dq, dk cancel to rounding noise around 0.
    for (double err :
         {MaxRelError(o, o_ref), MaxRelError(lse, lse_ref), MaxRelError(dq, dq_ref, 1e-2),
          MaxRelError(dk, dk_ref, 1e-2), MaxRelError(dv, dv_ref, 1e-2)}) {
      EXPECT_LT(err, kFp32Tolerance);
      worst = std::max(worst, err);
    }
    // Cache rows past past_len + T get no gradient.
    const int64_t row = shape.num_kv_heads * shape.head_dim;
    for (int64_t b = 0; b < shape.batch; ++b)
      for (int64_t j = shape.kv_len(); j < shape.kv_rows(); ++j)
        for (int64_t i = 0; i < row; ++i) ASSERT_EQ(dk[(b * shape.kv_rows() + j) * row + i], 0.0f);
  }
  ReportError(std::string("attention fp32 tiled vs naive, ") + GetParam().name, worst);
}

TEST_P(AttentionTest, ReferenceGradientsMatchFiniteDifferences) {
  const AttentionShape shape = ShapeOf(GetParam());
  const AttentionInputs in(shape, 200);
  const ref::AttentionDims dims = DimsOf(shape);
  std::vector<double> q = ToDouble(in.q), k = ToDouble(in.k), v = ToDouble(in.v);
  std::vector<double> o(q.size()), lse(shape.batch * shape.num_heads * shape.seq_len);
  auto loss = [&] {
    ref::AttentionForward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(), dims);
    return WeightedSum(o, in.dout);
  };
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  ref::AttentionBackward<double>(q.data(), k.data(), v.data(), ToDouble(in.dout).data(), dq.data(),
                                 dk.data(), dv.data(), dims);
  const double err =
      std::max({FiniteDifferenceError(loss, q, dq, 96), FiniteDifferenceError(loss, k, dk, 96),
                FiniteDifferenceError(loss, v, dv, 96)});
  ReportError(std::string("attention ref dq/dk/dv vs FD, ") + GetParam().name, err);
  EXPECT_LT(err, kFdTolerance);
}

TEST_P(AttentionTest, Fp32OpMatchesItsDirectionalFiniteDifference) {
  const AttentionShape shape = ShapeOf(GetParam());
  AttentionInputs in(shape, 300);
  Backend& be = CpuBackend();
  std::vector<float> o(in.q.size()), lse(shape.batch * shape.num_heads * shape.seq_len);
  ASSERT_OP_OK(
      be.AttentionForward(in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(), shape));
  std::vector<float> dq(in.q.size(), 0.0f), dk(in.k.size(), 0.0f), dv(in.v.size(), 0.0f);
  ASSERT_OP_OK(be.AttentionBackward(in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(),
                                    in.dout.data(), dq.data(), dk.data(), dv.data(), shape));
  auto loss = [&] {
    std::vector<float> out(in.q.size()), l(lse.size());
    EXPECT_TRUE(
        be.AttentionForward(in.q.data(), in.k.data(), in.v.data(), out.data(), l.data(), shape)
            .ok());
    return WeightedSum(out, in.dout);
  };
  // A larger step than the other ops: the softmax sums make fp32 rounding noise larger here.
  const double step = 1e-2;
  double err = DirectionalFdError(loss, in.v, dv, 303, step);
  if (shape.kv_len() == 1) {
    // One visible key: P = 1 whatever q and k are, so their gradients vanish.
    for (float g : dq) ASSERT_NEAR(g, 0.0f, 1e-6f);
    for (float g : dk) ASSERT_NEAR(g, 0.0f, 1e-6f);
  } else {
    err = std::max({err, DirectionalFdError(loss, in.q, dq, 301, step),
                    DirectionalFdError(loss, in.k, dk, 302, step)});
  }
  ReportError(std::string("attention fp32 directional FD, ") + GetParam().name, err);
  EXPECT_LT(err, kFp32FdTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttentionCase{"gqa6x2_T5", 2, 5, 0, 6, 2, 8, 0},
                                           AttentionCase{"mqa4x1_T67", 1, 67, 0, 4, 1, 8, 0},
                                           AttentionCase{"T1", 2, 1, 0, 6, 2, 8, 0},
                                           AttentionCase{"odd_head_dim5", 1, 9, 0, 2, 2, 5, 0},
                                           AttentionCase{"kv_cache_past4_T7", 2, 7, 4, 6, 3, 8, 3},
                                           AttentionCase{"decode_past70_T1", 1, 1, 70, 4, 2, 8, 2},
                                           AttentionCase{"head_dim64_T37", 1, 37, 0, 2, 1, 64, 0}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(AttentionKvCacheTest, OffsetQueriesEqualTheRowsOfFullAttention) {
  Backend& be = CpuBackend();
  const int64_t total = 75, past = 61, H = 6, Hkv = 2, D = 8;
  AttentionShape full{
      .batch = 1, .seq_len = total, .num_heads = H, .num_kv_heads = Hkv, .head_dim = D};
  const AttentionInputs in(full, 400);
  std::vector<float> o_full(in.q.size()), lse_full(H * total);
  ASSERT_OP_OK(be.AttentionForward(in.q.data(), in.k.data(), in.v.data(), o_full.data(),
                                   lse_full.data(), full));
  // The last total - past queries against the cache of all keys.
  AttentionShape step = full;
  step.seq_len = total - past;
  step.past_len = past;
  const std::vector<float> q_step(in.q.begin() + past * H * D, in.q.end());
  std::vector<float> o_step(q_step.size()), lse_step(H * step.seq_len);
  ASSERT_OP_OK(be.AttentionForward(q_step.data(), in.k.data(), in.v.data(), o_step.data(),
                                   lse_step.data(), step));
  const std::vector<float> o_rows(o_full.begin() + past * H * D, o_full.end());
  EXPECT_LT(MaxRelError(o_step, o_rows), 1e-6);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < step.seq_len; ++t)
      EXPECT_NEAR(lse_step[h * step.seq_len + t], lse_full[h * total + past + t], 1e-5);
}

TEST(AttentionDeterminismTest, BitwiseIdenticalAcrossRunsAndThreadCounts) {
  Backend& be = CpuBackend();
  const AttentionShape shape{
      .batch = 2, .seq_len = 150, .num_heads = 6, .num_kv_heads = 2, .head_dim = 16};
  const AttentionInputs in(shape, 500);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> o(in.q.size()), lse(shape.batch * shape.num_heads * shape.seq_len);
    std::vector<float> dq(in.q.size(), 0.0f), dk(in.k.size(), 0.0f), dv(in.v.size(), 0.0f);
    EXPECT_TRUE(
        be.AttentionForward(in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(), shape)
            .ok());
    EXPECT_TRUE(be.AttentionBackward(in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data(),
                                     in.dout.data(), dq.data(), dk.data(), dv.data(), shape)
                    .ok());
    std::vector<float> all = o;
    for (const auto* part : {&lse, &dq, &dk, &dv})
      all.insert(all.end(), part->begin(), part->end());
    return all;
  };
  const int default_threads = omp_get_max_threads();
  const std::vector<float> first = run(2);
  EXPECT_EQ(run(2), first);
  EXPECT_EQ(run(1), first);
  EXPECT_EQ(run(3), first);
  omp_set_num_threads(default_threads);
}

TEST(AttentionValidationTest, RejectsBadShapes) {
  Backend& be = CpuBackend();
  std::vector<float> buf(1024, 0.0f);
  AttentionShape shape{.batch = 1, .seq_len = 4, .num_heads = 6, .num_kv_heads = 4, .head_dim = 8};
  OpStatus st =
      be.AttentionForward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), shape);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("num_kv_heads"), std::string::npos) << st.message();
  shape.num_kv_heads = 2;
  shape.past_len = 3;
  shape.kv_capacity = 6;  // < past_len + seq_len
  EXPECT_FALSE(
      be.AttentionForward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), shape).ok());
  shape.kv_capacity = 0;
  EXPECT_FALSE(
      be.AttentionForward(buf.data(), nullptr, buf.data(), buf.data(), buf.data(), shape).ok());
  EXPECT_FALSE(be.AttentionBackward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(),
                                    nullptr, buf.data(), buf.data(), buf.data(), shape)
                   .ok());
}

}  // namespace
}  // namespace qtrain::kernels
