// Tiled Dual Chunk Attention on the CPU against the plain-loop reference: chunk boundaries
// inside tiles and on tile edges, GQA, batches, KV-cache offsets, lengths of many chunks; and
// the reductions it must obey (one chunk is plain causal attention; three equal queries are
// plain causal attention; decode rows equal the rows of the full pass).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"
#include "kernels/reference/reference_ops.h"

namespace qtrain::kernels {
namespace {

namespace ref = reference;
using testing::MaxRelError;
using testing::RandomFloats;
using testing::ToDouble;

constexpr double kFp32Tolerance = 2e-5;

struct DcaCase {
  const char* name;
  int64_t batch, seq_len, past_len, heads, kv_heads, head_dim, chunk_len, extra_capacity;
};

DcaAttentionShape ShapeOf(const DcaCase& c) {
  return DcaAttentionShape{.batch = c.batch,
                           .seq_len = c.seq_len,
                           .past_len = c.past_len,
                           .kv_capacity = c.past_len + c.seq_len + c.extra_capacity,
                           .num_heads = c.heads,
                           .num_kv_heads = c.kv_heads,
                           .head_dim = c.head_dim,
                           .chunk_len = c.chunk_len};
}

ref::AttentionDims DimsOf(const DcaAttentionShape& s, double scale = 0) {
  return {s.batch,     s.seq_len,
          s.past_len,  s.kv_rows(),
          s.num_heads, s.num_kv_heads,
          s.head_dim,  scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(s.head_dim))};
}

struct DcaInputs {
  DcaInputs(const DcaAttentionShape& s, uint32_t seed) {
    const int64_t nq = s.batch * s.seq_len * s.num_heads * s.head_dim;
    const int64_t nk = s.batch * s.kv_rows() * s.num_kv_heads * s.head_dim;
    q_intra = RandomFloats(nq, seed, -2.0f, 2.0f);
    q_succ = RandomFloats(nq, seed + 1, -2.0f, 2.0f);
    q_inter = RandomFloats(nq, seed + 2, -2.0f, 2.0f);
    k = RandomFloats(nk, seed + 3, -2.0f, 2.0f);
    v = RandomFloats(nk, seed + 4);
  }
  std::vector<float> q_intra, q_succ, q_inter, k, v;
};

struct Result {
  std::vector<float> o, lse;
};

Result RunTiled(const DcaInputs& in, const DcaAttentionShape& s, int64_t tile) {
  Result r{std::vector<float>(in.q_intra.size()),
           std::vector<float>(s.batch * s.num_heads * s.seq_len)};
  const OpStatus st =
      cpu::DcaAttentionForwardTiled(in.q_intra.data(), in.q_succ.data(), in.q_inter.data(),
                                    in.k.data(), in.v.data(), r.o.data(), r.lse.data(), s, tile);
  EXPECT_TRUE(st.ok()) << st.message();
  return r;
}

class DcaAttentionTest : public ::testing::TestWithParam<DcaCase> {};

TEST_P(DcaAttentionTest, TiledMatchesReferenceForEveryTileSize) {
  const DcaAttentionShape shape = ShapeOf(GetParam());
  const DcaInputs in(shape, 7);
  std::vector<double> o_ref(in.q_intra.size()),
      lse_ref(shape.batch * shape.num_heads * shape.seq_len);
  ref::DcaAttentionForward<double>(ToDouble(in.q_intra).data(), ToDouble(in.q_succ).data(),
                                   ToDouble(in.q_inter).data(), ToDouble(in.k).data(),
                                   ToDouble(in.v).data(), o_ref.data(), lse_ref.data(),
                                   DimsOf(shape), shape.chunk_len);
  for (int64_t tile : {int64_t{16}, int64_t{5}, int64_t{32}, int64_t{128}}) {
    SCOPED_TRACE("tile " + std::to_string(tile));
    const Result r = RunTiled(in, shape, tile);
    EXPECT_LT(MaxRelError(r.o, o_ref), kFp32Tolerance);
    EXPECT_LT(MaxRelError(r.lse, lse_ref), kFp32Tolerance);
  }
}

// chunk_len vs tiles: boundaries inside tiles (7, 13), on tile edges (16), a chunk longer than
// a tile (40), four or more chunks in every case but the last.
INSTANTIATE_TEST_SUITE_P(Shapes, DcaAttentionTest,
                         ::testing::Values(DcaCase{"Chunk7", 1, 45, 0, 2, 2, 8, 7, 0},
                                           DcaCase{"Chunk13Gqa", 2, 70, 0, 4, 2, 6, 13, 3},
                                           DcaCase{"Chunk16TileEdge", 1, 80, 0, 4, 1, 16, 16, 0},
                                           DcaCase{"Chunk40", 1, 170, 0, 2, 1, 8, 40, 0},
                                           DcaCase{"PastLen", 2, 9, 57, 4, 2, 8, 11, 5},
                                           DcaCase{"DecodeOneToken", 1, 1, 95, 2, 1, 8, 12, 31},
                                           DcaCase{"OneChunk", 1, 20, 0, 2, 2, 8, 64, 0}),
                         [](const ::testing::TestParamInfo<DcaCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(DcaAttention, EqualQueriesGivePlainCausalAttention) {
  const DcaAttentionShape s = ShapeOf({"", 2, 50, 6, 4, 2, 8, 9, 0});
  DcaInputs in(s, 21);
  in.q_succ = in.q_intra;
  in.q_inter = in.q_intra;
  const Result r = RunTiled(in, s, 16);
  const AttentionShape a{.batch = s.batch,
                         .seq_len = s.seq_len,
                         .past_len = s.past_len,
                         .kv_capacity = s.kv_capacity,
                         .num_heads = s.num_heads,
                         .num_kv_heads = s.num_kv_heads,
                         .head_dim = s.head_dim};
  std::vector<float> o(r.o.size()), lse(r.lse.size());
  ASSERT_TRUE(cpu::AttentionForwardTiled(in.q_intra.data(), in.k.data(), in.v.data(), o.data(),
                                         lse.data(), a, 16)
                  .ok());
  EXPECT_LT(MaxRelError(r.o, ToDouble(o)), kFp32Tolerance);
  EXPECT_LT(MaxRelError(r.lse, ToDouble(lse)), kFp32Tolerance);
}

TEST(DcaAttention, VariantsMatterAcrossChunks) {
  // Changing q_inter changes only queries at least two chunks past some key.
  const DcaAttentionShape s = ShapeOf({"", 1, 40, 0, 1, 1, 8, 10, 0});
  DcaInputs in(s, 3);
  const Result before = RunTiled(in, s, 16);
  for (float& x : in.q_inter) x = -x;
  const Result after = RunTiled(in, s, 16);
  for (int64_t t = 0; t < s.seq_len; ++t) {
    const bool uses_inter = t / s.chunk_len >= 2;
    EXPECT_EQ(before.lse[t] != after.lse[t], uses_inter) << "query " << t;
  }
}

TEST(DcaAttention, DecodeRowsEqualTheFullPass) {
  const DcaAttentionShape full = ShapeOf({"", 1, 60, 0, 4, 2, 8, 11, 0});
  const DcaInputs in(full, 5);
  const Result all = RunTiled(in, full, 16);
  const int64_t row = full.num_heads * full.head_dim;
  for (int64_t t : {int64_t{0}, int64_t{10}, int64_t{11}, int64_t{33}, int64_t{59}}) {
    DcaAttentionShape step = full;
    step.seq_len = 1;
    step.past_len = t;
    step.kv_capacity = full.seq_len;
    DcaInputs one = in;
    for (std::vector<float>* q : {&one.q_intra, &one.q_succ, &one.q_inter}) {
      q->assign(q->begin() + t * row, q->begin() + (t + 1) * row);
    }
    const Result r = RunTiled(one, step, 16);
    for (int64_t h = 0; h < full.num_heads; ++h) {
      EXPECT_NEAR(r.lse[h], all.lse[h * full.seq_len + t], 1e-5) << "t " << t << " h " << h;
    }
    for (int64_t i = 0; i < row; ++i) EXPECT_NEAR(r.o[i], all.o[t * row + i], 1e-5);
  }
}

TEST(DcaAttention, RefusesBadShapes) {
  DcaAttentionShape s = ShapeOf({"", 1, 4, 0, 2, 2, 8, 0, 0});
  const DcaInputs in(ShapeOf({"", 1, 4, 0, 2, 2, 8, 4, 0}), 1);
  std::vector<float> o(in.q_intra.size()), lse(8);
  auto run = [&] {
    return CpuBackend().DcaAttentionForward(in.q_intra.data(), in.q_succ.data(), in.q_inter.data(),
                                            in.k.data(), in.v.data(), o.data(), lse.data(), s);
  };
  OpStatus st = run();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("chunk_len"), std::string::npos) << st.message();
  s.chunk_len = 4;
  s.num_kv_heads = 3;
  st = run();
  EXPECT_NE(st.message().find("num_kv_heads"), std::string::npos) << st.message();
  s.num_kv_heads = 2;
  s.kv_capacity = 2;
  st = run();
  EXPECT_NE(st.message().find("kv_capacity"), std::string::npos) << st.message();
  s.kv_capacity = 0;
  EXPECT_TRUE(run().ok());
}

}  // namespace
}  // namespace qtrain::kernels
