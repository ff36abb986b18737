// Tile kernels for attention and cross-entropy. Built once per SIMD level (target_clones) and
// dispatched at load time, since the project flags target the baseline x86-64 ISA.
#include "kernels/cpu/tile_math.h"

#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QTRAIN_TILE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QTRAIN_TILE_CLONES
#endif

namespace qtrain::kernels::cpu {
namespace {

// kTileLanes floats as one value; each clone lowers it to its widest registers (one zmm, two
// ymm or four xmm).
typedef float Lanes __attribute__((vector_size(kTileLanes * sizeof(float))));

// (By pointer: returning a 64-byte vector by value has a target-dependent ABI.)
[[gnu::always_inline]] inline void LoadLanes(const float* p, Lanes* v) {
  std::memcpy(v, p, sizeof(*v));
}

// One kRows x kTileLanes block of C, accumulated over depth in registers. Always inlined, so
// that each clone of TileGemm compiles it for its own ISA.
template <int kRows>
[[gnu::always_inline]] inline void MicroTile(bool accumulate, int64_t depth, const float* a,
                                             int64_t a_row_stride, int64_t a_col_stride,
                                             const float* b, int64_t ldb, float* c, int64_t ldc) {
  Lanes acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = Lanes{};
  for (int64_t k = 0; k < depth; ++k) {
    Lanes bk;
    LoadLanes(b + k * ldb, &bk);
    const float* ak = a + k * a_col_stride;
    for (int r = 0; r < kRows; ++r) acc[r] += ak[r * a_row_stride] * bk;
  }
  for (int r = 0; r < kRows; ++r) {
    float* cr = c + r * ldc;
    Lanes out = acc[r];
    if (accumulate) {
      Lanes old;
      LoadLanes(cr, &old);
      out = old + acc[r];
    }
    std::memcpy(cr, &out, sizeof(out));
  }
}

}  // namespace

// Applies MicroTile<kRows> to rows [0, kRows) of A and C, for every column block.
template <int kRows>
[[gnu::always_inline]] inline void RowBlock(bool accumulate, int64_t cols, int64_t depth,
                                            const float* a, int64_t a_row_stride,
                                            int64_t a_col_stride, const float* b, int64_t ldb,
                                            float* c, int64_t ldc) {
  for (int64_t n = 0; n < cols; n += kTileLanes) {
    MicroTile<kRows>(accumulate, depth, a, a_row_stride, a_col_stride, b + n, ldb, c + n, ldc);
  }
}

QTRAIN_TILE_CLONES
void TileGemm(bool accumulate, int64_t rows, int64_t cols, int64_t depth, const float* a,
              int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb, float* c,
              int64_t ldc) {
  // 6 rows: 6 independent accumulators hide the FMA latency with AVX-512 (12 with AVX2, which
  // still fit its 16 registers).
  constexpr int kBlockRows = 6;
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) {
    RowBlock<kBlockRows>(accumulate, cols, depth, a + r * a_row_stride, a_row_stride, a_col_stride,
                         b, ldb, c + r * ldc, ldc);
  }
  const float* ar = a + r * a_row_stride;
  float* cr = c + r * ldc;
  switch (rows - r) {
    case 5:
      RowBlock<5>(accumulate, cols, depth, ar, a_row_stride, a_col_stride, b, ldb, cr, ldc);
      break;
    case 4:
      RowBlock<4>(accumulate, cols, depth, ar, a_row_stride, a_col_stride, b, ldb, cr, ldc);
      break;
    case 3:
      RowBlock<3>(accumulate, cols, depth, ar, a_row_stride, a_col_stride, b, ldb, cr, ldc);
      break;
    case 2:
      RowBlock<2>(accumulate, cols, depth, ar, a_row_stride, a_col_stride, b, ldb, cr, ldc);
      break;
    case 1:
      RowBlock<1>(accumulate, cols, depth, ar, a_row_stride, a_col_stride, b, ldb, cr, ldc);
      break;
    default:
      break;
  }
}

// exp(x) = 2^n exp(f) with n = round(x log2 e) and f = x - n ln 2 (ln 2 split in two for
// precision); exp(f) by the Cephes expf polynomial.
QTRAIN_TILE_CLONES
void ExpInPlace(float* x, int64_t n) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kMin = -87.0f, kMax = 88.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float in = x[i];
    const float v = in < kMin ? kMin : (in > kMax ? kMax : in);
    const float fn = (v * kLog2e + kRound) - kRound;
    const float f = (v - fn * kLn2Hi) - fn * kLn2Lo;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    const float e = p * (f * f) + f + 1.0f;
    const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    x[i] = in < kMin ? 0.0f : e * scale;
  }
}

QTRAIN_TILE_CLONES
float LaneMax(const float* x, int64_t n) {
  float lanes[kTileLanes];
  for (int l = 0; l < kTileLanes; ++l) lanes[l] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kTileLanes <= n; i += kTileLanes) {
    for (int l = 0; l < kTileLanes; ++l) lanes[l] = lanes[l] < x[i + l] ? x[i + l] : lanes[l];
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] = lanes[l] < x[i] ? x[i] : lanes[l];
  float max = lanes[0];
  for (int l = 1; l < kTileLanes; ++l) max = max < lanes[l] ? lanes[l] : max;
  return max;
}

QTRAIN_TILE_CLONES
float LaneSum(const float* x, int64_t n) {
  float lanes[kTileLanes] = {};
  int64_t i = 0;
  for (; i + kTileLanes <= n; i += kTileLanes) {
    for (int l = 0; l < kTileLanes; ++l) lanes[l] += x[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] += x[i];
  float sum = 0.0f;
  for (int l = 0; l < kTileLanes; ++l) sum += lanes[l];
  return sum;
}

}  // namespace qtrain::kernels::cpu
