// Tile kernels for attention. The project flags target the baseline x86-64 ISA: each kernel has an
// AVX-512 path, taken when the CPU has it (simd.h), and a portable one (built for AVX2 and the
// baseline with target_clones, or a plain loop).
#include "kernels/cpu/tile_math.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "kernels/cpu/simd.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QTRAIN_TILE_CLONES __attribute__((target_clones("avx2", "default")))
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

// One kRows x (kBlocks * kTileLanes) block of C, accumulated over depth in registers. Always
// inlined, so that each caller compiles it for its own ISA.
template <int kRows, int kBlocks>
[[gnu::always_inline]] inline void MicroTile(bool accumulate, int64_t depth, const float* a,
                                             int64_t a_row_stride, int64_t a_col_stride,
                                             const float* b, int64_t ldb, float* c, int64_t ldc) {
  Lanes acc[kRows][kBlocks];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kBlocks; ++j) acc[r][j] = Lanes{};
  for (int64_t k = 0; k < depth; ++k) {
    Lanes bk[kBlocks];
    for (int j = 0; j < kBlocks; ++j) LoadLanes(b + k * ldb + j * kTileLanes, &bk[j]);
    const float* ak = a + k * a_col_stride;
    for (int r = 0; r < kRows; ++r) {
      const float ar = ak[r * a_row_stride];
      for (int j = 0; j < kBlocks; ++j) acc[r][j] += ar * bk[j];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int j = 0; j < kBlocks; ++j) {
      float* cr = c + r * ldc + j * kTileLanes;
      Lanes out = acc[r][j];
      if (accumulate) {
        Lanes old;
        LoadLanes(cr, &old);
        out = old + acc[r][j];
      }
      std::memcpy(cr, &out, sizeof(out));
    }
  }
}

}  // namespace

// Applies MicroTile to rows [0, kRows) of A and C, for every column block: two lane blocks at a
// time while there are two (with kWide), then one.
template <int kRows, bool kWide>
[[gnu::always_inline]] inline void RowBlock(bool accumulate, int64_t cols, int64_t depth,
                                            const float* a, int64_t a_row_stride,
                                            int64_t a_col_stride, const float* b, int64_t ldb,
                                            float* c, int64_t ldc) {
  int64_t n = 0;
  if constexpr (kWide) {
    for (; n + 2 * kTileLanes <= cols; n += 2 * kTileLanes) {
      MicroTile<kRows, 2>(accumulate, depth, a, a_row_stride, a_col_stride, b + n, ldb, c + n, ldc);
    }
  }
  for (; n < cols; n += kTileLanes) {
    MicroTile<kRows, 1>(accumulate, depth, a, a_row_stride, a_col_stride, b + n, ldb, c + n, ldc);
  }
}

// Rows of C in blocks of kBlockRows, then the remainder in halving blocks (4, 2, 1). Every
// element of C is the same k-ordered sum whatever the blocking.
template <int kBlockRows, bool kWide>
[[gnu::always_inline]] inline void BlockedTileGemm(bool accumulate, int64_t rows, int64_t cols,
                                                   int64_t depth, const float* a,
                                                   int64_t a_row_stride, int64_t a_col_stride,
                                                   const float* b, int64_t ldb, float* c,
                                                   int64_t ldc) {
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows) {
    RowBlock<kBlockRows, kWide>(accumulate, cols, depth, a + r * a_row_stride, a_row_stride,
                                a_col_stride, b, ldb, c + r * ldc, ldc);
  }
  auto tail = [&]<int kRows>() {
    if (kRows < kBlockRows && rows - r >= kRows) {
      RowBlock<kRows, kWide>(accumulate, cols, depth, a + r * a_row_stride, a_row_stride,
                             a_col_stride, b, ldb, c + r * ldc, ldc);
      r += kRows;
    }
  };
  tail.template operator()<4>();
  tail.template operator()<2>();
  tail.template operator()<1>();
}

namespace {

#ifdef QTRAIN_HAVE_AVX512_PATH
// 8 rows by 32 columns: 16 independent zmm accumulators keep both FMA ports busy through their
// latency, with few enough row addresses for the general registers; 8 by 16 where C is 16 wide.
QTRAIN_AVX512 void TileGemmAvx512(bool accumulate, int64_t rows, int64_t cols, int64_t depth,
                                  const float* a, int64_t a_row_stride, int64_t a_col_stride,
                                  const float* b, int64_t ldb, float* c, int64_t ldc) {
  BlockedTileGemm<8, true>(accumulate, rows, cols, depth, a, a_row_stride, a_col_stride, b, ldb, c,
                           ldc);
}
#endif

// 6 rows: with AVX2 each row of Lanes takes two ymm registers, and 12 accumulators still fit
// its 16.
QTRAIN_TILE_CLONES
void TileGemmGeneric(bool accumulate, int64_t rows, int64_t cols, int64_t depth, const float* a,
                     int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb,
                     float* c, int64_t ldc) {
  BlockedTileGemm<6, false>(accumulate, rows, cols, depth, a, a_row_stride, a_col_stride, b, ldb, c,
                            ldc);
}

}  // namespace

void TileGemm(bool accumulate, int64_t rows, int64_t cols, int64_t depth, const float* a,
              int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb, float* c,
              int64_t ldc) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) {
    return TileGemmAvx512(accumulate, rows, cols, depth, a, a_row_stride, a_col_stride, b, ldb, c,
                          ldc);
  }
#endif
  TileGemmGeneric(accumulate, rows, cols, depth, a, a_row_stride, a_col_stride, b, ldb, c, ldc);
}

namespace {

using simd::UseAvx512;

#ifdef QTRAIN_HAVE_AVX512_PATH
namespace avx512 {

using simd::Exp16;
using simd::FirstLanes;

QTRAIN_AVX512 float OnlineSoftmaxRow(float* s, int64_t n, int64_t visible, float scale,
                                     float* row_max, float* row_sum) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < visible; c += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(s + c), vscale);
    max = _mm512_mask_max_ps(max, FirstLanes(visible - c), max, x);
    _mm512_storeu_ps(s + c, x);
  }
  const float tile_max = _mm512_reduce_max_ps(max);
  const float new_max = *row_max < tile_max ? tile_max : *row_max;
  const float correction = simd::Exp(*row_max - new_max);  // exp(-inf) = 0 on a row's first tile
  const __m512 vmax = _mm512_set1_ps(new_max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = FirstLanes(visible - c);
    const __m512 p = _mm512_maskz_mov_ps(keep, Exp16(_mm512_sub_ps(_mm512_loadu_ps(s + c), vmax)));
    sum = _mm512_add_ps(sum, p);
    _mm512_storeu_ps(s + c, p);
  }
  *row_sum = *row_sum * correction + _mm512_reduce_add_ps(sum);
  *row_max = new_max;
  return correction;
}

QTRAIN_AVX512 void SoftmaxBackwardRow(float* s, float* ds, int64_t n, int64_t visible, float scale,
                                      float lse, float delta) {
  const __m512 vscale = _mm512_set1_ps(scale), vlse = _mm512_set1_ps(lse),
               vdelta = _mm512_set1_ps(delta);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 keep = FirstLanes(visible - c);
    const __m512 p =
        _mm512_maskz_mov_ps(keep, Exp16(_mm512_fmsub_ps(_mm512_loadu_ps(s + c), vscale, vlse)));
    const __m512 d =
        _mm512_mul_ps(_mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(ds + c), vdelta)), vscale);
    _mm512_storeu_ps(s + c, p);
    _mm512_storeu_ps(ds + c, d);
  }
}

}  // namespace avx512

#endif  // QTRAIN_HAVE_AVX512_PATH

}  // namespace

float OnlineSoftmaxRow(float* s, int64_t n, int64_t visible, float scale, float* row_max,
                       float* row_sum) {
  if (visible <= 0) {
    std::memset(s, 0, n * sizeof(float));
    return 1.0f;
  }
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (UseAvx512()) return avx512::OnlineSoftmaxRow(s, n, visible, scale, row_max, row_sum);
#endif
  float tile_max = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < visible; ++c) {
    s[c] *= scale;
    tile_max = tile_max < s[c] ? s[c] : tile_max;
  }
  const float new_max = *row_max < tile_max ? tile_max : *row_max;
  const float correction = simd::Exp(*row_max - new_max);
  float sum = 0.0f;
  for (int64_t c = 0; c < n; ++c) {
    s[c] = c < visible ? simd::Exp(s[c] - new_max) : 0.0f;
    sum += s[c];
  }
  *row_sum = *row_sum * correction + sum;
  *row_max = new_max;
  return correction;
}

void SoftmaxBackwardRow(float* s, float* ds, int64_t n, int64_t visible, float scale, float lse,
                        float delta) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (UseAvx512()) return avx512::SoftmaxBackwardRow(s, ds, n, visible, scale, lse, delta);
#endif
  for (int64_t c = 0; c < n; ++c) {
    const float p = c < visible ? simd::Exp(s[c] * scale - lse) : 0.0f;
    s[c] = p;
    ds[c] = p * (ds[c] - delta) * scale;
  }
}

}  // namespace qtrain::kernels::cpu
