// Small dense kernels for the attention tiles: a register-blocked GEMM on tile buffers and the
// softmax rows of the forward and backward. They run inside OpenMP work items on tile buffers
// small enough for L1, where a BLAS call would cost more than the product.
//
// Each output is a fixed sequence of fp32 operations (no reassociation), so results are bitwise
// reproducible on a given CPU; the compiler may fuse multiply-adds in the AVX2/AVX-512 builds, so
// CPUs with different SIMD levels can differ in the last bits.
#ifndef QTRAIN_KERNELS_CPU_TILE_MATH_H_
#define QTRAIN_KERNELS_CPU_TILE_MATH_H_

#include <cstdint>

namespace qtrain::kernels::cpu {

// Columns per register block; `cols` arguments below must be multiples of it.
inline constexpr int64_t kTileLanes = 16;

inline int64_t RoundUpToLanes(int64_t n) { return (n + kTileLanes - 1) / kTileLanes * kTileLanes; }

// C[m, n] (+)= sum_{k < depth} A(m, k) * B[k, n] for m < rows, n < cols, where
// A(m, k) = a[m * a_row_stride + k * a_col_stride] (so A may be a transposed view),
// B[k, n] = b[k * ldb + n] and C[m, n] = c[m * ldc + n]. With `accumulate` the sum over k is
// formed first and then added to C. cols must be a multiple of kTileLanes.
void TileGemm(bool accumulate, int64_t rows, int64_t cols, int64_t depth, const float* a,
              int64_t a_row_stride, int64_t a_col_stride, const float* b, int64_t ldb, float* c,
              int64_t ldc);

// One row of a forward score tile, for the online softmax. s[0 .. n) holds q.k (unscaled; n a
// multiple of kTileLanes); keys c < visible are attended, the rest masked. Sets
// s[c] = exp(scale s[c] - new_max) for c < visible and 0 beyond, where new_max is the larger of
// *row_max and this tile's max of scale s[c]; updates *row_max and *row_sum (sum of exps so far,
// rescaled) and returns exp(old max - new max), the factor for what was accumulated before.
// With visible == 0 the row becomes zeros, the running values stay, and it returns 1.
float OnlineSoftmaxRow(float* s, int64_t n, int64_t visible, float scale, float* row_max,
                       float* row_sum);

// One row of a backward tile: with s = q.k (unscaled) and ds = dout.v over n columns (a multiple
// of kTileLanes), sets p = exp(scale s - lse) into s and scale * p * (ds - delta) into ds for
// c < visible, and 0 into both beyond.
void SoftmaxBackwardRow(float* s, float* ds, int64_t n, int64_t visible, float scale, float lse,
                        float delta);

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_TILE_MATH_H_
