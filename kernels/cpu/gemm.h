// Row-major single-precision GEMM for the CPU backend, parallelised by qtrain itself:
//   C[m, n] = op(A) op(B) + beta C,  op(A) [m, k], op(B) [k, n]
// C is cut into fixed blocks of rows (or of columns when m is small); OpenMP threads take the
// blocks and each runs a single-threaded product on its block: OpenBLAS's sgemm (PlainSgemm in a
// build without BLAS), or, for the
// shapes where it is faster, the register-blocked tile GEMM of tile_math.h (small operands read
// in place, without packing). One threading runtime (OpenMP) serves every op, so GEMM threads
// never compete with spinning OpenMP workers; the blocks and the choice of kernel depend only on
// the shape, not on the thread count, so neither do the results: every element of C is the same
// K-ordered sum whichever thread computes it.
#ifndef QTRAIN_KERNELS_CPU_GEMM_H_
#define QTRAIN_KERNELS_CPU_GEMM_H_

#include <cstdint>

namespace qtrain::kernels::cpu {

struct GemmParams {
  bool trans_a = false;  // A is stored [k, m] (lda >= m) instead of [m, k] (lda >= k)
  bool trans_b = false;  // B is stored [n, k] (ldb >= k) instead of [k, n] (ldb >= n)
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;  // 0: C is overwritten (never read); 1: accumulated into
  float* c = nullptr;
  int64_t ldc = 0;
};

// Rows (or columns) of C per parallel block. Big enough that OpenBLAS's packing of the other
// operand is a small share of each block's work.
inline constexpr int64_t kGemmBlock = 128;
// k per chunk where a weight gradient is split along k (gemm.cc, UseSplitK).
inline constexpr int64_t kSplitKChunk = 512;

// Dimensions must fit in int (ValidateLinear checks). Safe to call inside an OpenMP region (it
// then runs on the calling thread).
void Sgemm(const GemmParams& p);

// The same product on the calling thread by plain loops: the single-threaded GEMM of a build
// without BLAS (QTRAIN_CPU_BLAS=0, e.g. the GPU checks' CPU reference on a machine without
// OpenBLAS). Always compiled, so the tests hold it to OpenBLAS's results.
void PlainSgemm(const GemmParams& p);

// How Sgemm computes a product of this shape (the tests check that each path is reached).
enum class GemmPath {
  kSplitK,       // a weight gradient with a long k: fixed k chunks, added in order
  kTileRows,     // the tile GEMM of tile_math.h over row blocks (AVX-512 CPUs only)
  kBlasRows,     // OpenBLAS over row blocks
  kBlasColumns,  // OpenBLAS over column blocks (few rows)
};
GemmPath ChooseGemmPath(const GemmParams& p);

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_GEMM_H_
