// Sgemm against a double-precision loop, for every transpose combination the kernels use and
// shapes that take each path (OpenBLAS blocks by rows or columns, the tile GEMM on AVX-512 CPUs,
// split k, each case checked to take its path), with beta 0 (C overwritten, even when it holds
// NaN) and 1 (accumulated); and bitwise thread-count independence. PlainSgemm (the GEMM of a
// build without BLAS) against the same loop.
#include "kernels/cpu/gemm.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/test_util.h"

namespace qtrain::kernels::cpu {
namespace {

using testing::RandomFloats;

struct Case {
  bool trans_a, trans_b;
  int64_t m, n, k;
  bool split_k = false;  // the shape must take the split-k path
};

std::string Name(const Case& c) {
  return std::string(c.trans_a ? "T" : "N") + (c.trans_b ? "T" : "N") + " m" + std::to_string(c.m) +
         " n" + std::to_string(c.n) + " k" + std::to_string(c.k);
}

// Leading dimensions one wider than needed, so that strides are exercised.
struct Operands {
  explicit Operands(const Case& c)
      : lda((c.trans_a ? c.m : c.k) + 1),
        ldb((c.trans_b ? c.k : c.n) + 1),
        ldc(c.n + 1),
        a(RandomFloats((c.trans_a ? c.k : c.m) * lda, 1)),
        b(RandomFloats((c.trans_b ? c.n : c.k) * ldb, 2)) {}
  GemmParams Params(const Case& c, float beta, float* out) const {
    return {.trans_a = c.trans_a,
            .trans_b = c.trans_b,
            .m = c.m,
            .n = c.n,
            .k = c.k,
            .a = a.data(),
            .lda = lda,
            .b = b.data(),
            .ldb = ldb,
            .beta = beta,
            .c = out,
            .ldc = ldc};
  }
  double A(const Case& c, int64_t i, int64_t l) const {
    return c.trans_a ? a[l * lda + i] : a[i * lda + l];
  }
  double B(const Case& c, int64_t l, int64_t j) const {
    return c.trans_b ? b[j * ldb + l] : b[l * ldb + j];
  }
  int64_t lda, ldb, ldc;
  std::vector<float> a, b;
};

const Case kCases[] = {
    {false, true, 300, 64, 64},    // linear forward (tile path)
    {false, true, 300, 48, 20},    // linear forward, n a lane multiple, small k (tile path)
    {false, true, 70, 4096, 64},   // LM head forward (OpenBLAS, column blocks)
    {false, true, 300, 30, 64},    // n not a lane multiple (OpenBLAS)
    {false, false, 300, 64, 176},  // input gradient (tile path)
    {false, false, 300, 64, 64},   // input gradient (OpenBLAS)
    {true, false, 176, 64, 300},   // weight gradient (OpenBLAS, row blocks)
    {true, false, 4096, 64, 40},   // LM head weight gradient (OpenBLAS, row blocks)
    {true, false, 64, 176, 300},   // weight gradient (OpenBLAS)
    {true, true, 33, 17, 9},       // both transposed (OpenBLAS)
    // Weight gradients over many tokens: split k. The smallest k that splits (2 chunks), a
    // partial last chunk, and a k long enough that the chunks grow past kSplitKChunk (16 of 576).
    {true, false, 255, 256, 2 * kSplitKChunk, true},
    {true, false, 64, 176, 1500, true},
    {true, false, 16, 64, 9000, true},
    {true, false, 40, 24, 2 * kSplitKChunk - 1},  // one short of splitting (OpenBLAS)
};

TEST(SgemmTest, CasesTakeTheirPaths) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(Name(c));
    std::vector<float> out(1);
    const Operands op(c);
    const GemmPath path = ChooseGemmPath(op.Params(c, 0.0f, out.data()));
    EXPECT_EQ(path == GemmPath::kSplitK, c.split_k);
  }
}

// The worst error of gemm(op) over C relative to the sum of the magnitudes of each element's
// terms, with beta 0 (C poisoned with NaN first) and 1; the padding column must stay untouched.
template <typename Gemm>
void ExpectMatchesDoublePrecision(const Case& c, Gemm gemm, double tolerance) {
  const Operands op(c);
  const std::vector<float> c0 = RandomFloats(c.m * op.ldc, 3);
  for (float beta : {0.0f, 1.0f}) {
    std::vector<float> out = c0;
    if (beta == 0.0f) out.assign(out.size(), std::numeric_limits<float>::quiet_NaN());
    gemm(op.Params(c, beta, out.data()));
    double worst = 0;
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        double want = beta * c0[i * op.ldc + j], scale = std::abs(want);
        for (int64_t l = 0; l < c.k; ++l) {
          want += op.A(c, i, l) * op.B(c, l, j);
          scale += std::abs(op.A(c, i, l) * op.B(c, l, j));
        }
        worst = std::max(worst, std::abs(out[i * op.ldc + j] - want) / (scale + 1e-30));
      }
      ASSERT_EQ(std::isnan(out[i * op.ldc + c.n]), beta == 0.0f) << i;
    }
    EXPECT_LT(worst, tolerance) << "beta " << beta;
  }
}

TEST(SgemmTest, MatchesDoublePrecisionForEveryPath) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(Name(c));
    ExpectMatchesDoublePrecision(c, Sgemm, 1e-6);
  }
}

// The GEMM of a build without BLAS: one fp32 sum along k per element, so its rounding error
// grows with k (about sqrt(k) ulps on random data); the bound allows 4 sqrt(k) ulps. The cases
// up to 4M multiply-adds cover every transpose (the larger ones only take other Sgemm paths).
TEST(PlainSgemmTest, MatchesDoublePrecision) {
  for (const Case& c : kCases) {
    if (c.m * c.n * c.k > (int64_t{1} << 22)) continue;
    SCOPED_TRACE(Name(c));
    ExpectMatchesDoublePrecision(c, PlainSgemm, std::max(1e-6, 4 * 6e-8 * std::sqrt(double(c.k))));
  }
}

TEST(SgemmTest, ResultsDoNotDependOnTheThreadCount) {
  const int saved = omp_get_max_threads();
  for (const Case& c : kCases) {
    SCOPED_TRACE(Name(c));
    const Operands op(c);
    std::vector<float> first;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      std::vector<float> out = RandomFloats(c.m * op.ldc, 4);
      Sgemm(op.Params(c, 1.0f, out.data()));
      if (first.empty()) {
        first = out;
      } else {
        EXPECT_EQ(out, first) << threads << " threads";
      }
    }
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace qtrain::kernels::cpu
