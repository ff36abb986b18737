#include "kernels/cpu/gemm.h"

#include <omp.h>
#if QTRAIN_CPU_BLAS
#include <cblas.h>
#endif

#include <algorithm>
#include <mutex>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/tile_math.h"

namespace qtrain::kernels::cpu {
namespace {

// OpenBLAS's own thread pool stays unused: every call below is single-threaded.
void UseSingleThreadedBlas() {
#if QTRAIN_CPU_BLAS
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
#endif
}

// One single-threaded product: OpenBLAS's sgemm, or PlainSgemm in a build without BLAS.
void SerialSgemm(const GemmParams& p) {
#if QTRAIN_CPU_BLAS
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans,
              p.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(p.m), static_cast<int>(p.n),
              static_cast<int>(p.k), 1.0f, p.a, static_cast<int>(p.lda), p.b,
              static_cast<int>(p.ldb), p.beta, p.c, static_cast<int>(p.ldc));
#else
  PlainSgemm(p);
#endif
}

void BlockGemm(const GemmParams& p, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  GemmParams block = p;
  block.m = rows;
  block.n = cols;
  block.a = p.trans_a ? p.a + row0 : p.a + row0 * p.lda;
  block.b = p.trans_b ? p.b + col0 * p.ldb : p.b + col0;
  block.c = p.c + row0 * p.ldc + col0;
  SerialSgemm(block);
}

// Whether the register-blocked tile GEMM (tile_math.h) beats a packed OpenBLAS call on this
// product. It reads A and B in place (B transposed once, when it is small), so it wins where
// OpenBLAS's packing and C pre-zeroing outweigh the product: the linear forward with a short k
// and input gradients with a narrow n (the LM head's included), B small enough for L2. The shapes
// come from the small presets' GEMMs on an AVX-512 CPU (bench/kernels_bench, BM_Gemm, 1 thread:
// 1.0-1.5x OpenBLAS there, and +2-3% on a whole training step). Weight gradients stay with
// OpenBLAS (no gain measured), and so does everything on CPUs without AVX-512 (unmeasured).
bool UseTileGemm(const GemmParams& p) {
  if (!simd::UseAvx512() || p.n % kTileLanes != 0) return false;
  const int64_t b_size = p.k * p.n;  // floats of B, which every row block reads
  if (!p.trans_a && p.trans_b) return p.k <= 256 && b_size <= (1 << 16);   // x W^T, B^T copied
  if (!p.trans_a && !p.trans_b) return p.n <= 256 && b_size <= (1 << 18);  // dy W
  return false;
}

// B as a [k, n] row-major matrix for TileGemm: B itself, or B^T copied into `storage`.
const float* TileB(const GemmParams& p, std::vector<float>& storage) {
  if (!p.trans_b) return p.b;
  storage.resize(p.k * p.n);
  for (int64_t j = 0; j < p.n; ++j) {
    for (int64_t i = 0; i < p.k; ++i) storage[i * p.n + j] = p.b[j * p.ldb + i];
  }
  return storage.data();
}

// A weight gradient's small C (m x n) with a long k (the tokens) has too few row blocks to keep
// the threads busy: the k range is cut into fixed chunks instead, each chunk's product goes to
// its own buffer, and the chunks are added to C in chunk order. The chunks depend only on k, so
// the result does not depend on the thread count either.
bool UseSplitK(const GemmParams& p) {
  return p.trans_a && !p.trans_b && p.m * p.n <= (int64_t{1} << 16) && p.k >= 2 * kSplitKChunk &&
         p.m < 2 * kGemmBlock && WorthParallel(p.m * p.n * p.k);
}

void SplitKGemm(const GemmParams& p) {
  // kSplitKChunk rows of k per chunk, more when that would make over kMaxSplitKChunks partial
  // products to hold.
  constexpr int64_t kMaxSplitKChunks = 16;
  const int64_t chunk_k =
      std::max(kSplitKChunk, (p.k + kMaxSplitKChunks * 64 - 1) / (kMaxSplitKChunks * 64) * 64);
  const int64_t chunks = (p.k + chunk_k - 1) / chunk_k;
  const int64_t size = p.m * p.n;
  static thread_local std::vector<float> partials;
  partials.resize(chunks * size);
  float* part = partials.data();
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t k0 = c * chunk_k;
    // A is stored [k, m] (trans_a) and B [k, n]: chunk c is rows k0 .. of both.
    GemmParams chunk = p;
    chunk.k = std::min(chunk_k, p.k - k0);
    chunk.a = p.a + k0 * p.lda;
    chunk.b = p.b + k0 * p.ldb;
    chunk.beta = 0.0f;
    chunk.c = part + c * size;
    chunk.ldc = p.n;
    SerialSgemm(chunk);
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      float sum = part[i * p.n + j];
      for (int64_t c = 1; c < chunks; ++c) sum += part[c * size + i * p.n + j];
      float* out = p.c + i * p.ldc + j;
      *out = p.beta != 0.0f ? *out + sum : sum;
    }
  }
}

}  // namespace

void PlainSgemm(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  // A(i, l) and B(l, j) through the transposes; each row of C is summed in a local row first, so
  // C is read only when accumulating (beta 1) and never when overwriting (beta 0).
  std::vector<float> row(static_cast<size_t>(p.n));
  std::vector<float> a_row(static_cast<size_t>(p.k));
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t l = 0; l < p.k; ++l)
      a_row[l] = p.trans_a ? p.a[l * p.lda + i] : p.a[i * p.lda + l];
    if (p.trans_b) {
      // B stored [n, k]: each element of the row is a dot product of two contiguous rows.
      for (int64_t j = 0; j < p.n; ++j) {
        const float* b = p.b + j * p.ldb;
        float sum = 0.0f;
        for (int64_t l = 0; l < p.k; ++l) sum += a_row[l] * b[l];
        row[j] = sum;
      }
    } else {
      // B stored [k, n]: the row is a sum of B's rows scaled by A(i, l), in l order.
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t l = 0; l < p.k; ++l) {
        const float a = a_row[l];
        const float* b = p.b + l * p.ldb;
        for (int64_t j = 0; j < p.n; ++j) row[j] += a * b[j];
      }
    }
    float* c = p.c + i * p.ldc;
    if (p.beta != 0.0f) {
      for (int64_t j = 0; j < p.n; ++j) c[j] = p.beta * c[j] + row[j];
    } else {
      std::copy(row.begin(), row.end(), c);
    }
  }
}

GemmPath ChooseGemmPath(const GemmParams& p) {
  if (UseSplitK(p)) return GemmPath::kSplitK;
  if (UseTileGemm(p)) return GemmPath::kTileRows;  // rows only: its B is shared by every block
  return p.m >= 2 * kGemmBlock || p.m >= p.n ? GemmPath::kBlasRows : GemmPath::kBlasColumns;
}

void Sgemm(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  UseSingleThreadedBlas();
  const GemmPath path = ChooseGemmPath(p);
  if (path == GemmPath::kSplitK) return SplitKGemm(p);
  const bool tile = path == GemmPath::kTileRows;
  const bool split_rows = path != GemmPath::kBlasColumns;
  const int64_t extent = split_rows ? p.m : p.n;
  const int64_t blocks = (extent + kGemmBlock - 1) / kGemmBlock;
  const bool parallel = blocks > 1 && !omp_in_parallel() && WorthParallel(p.m * p.n * p.k);
  static thread_local std::vector<float> transposed_b;
  const float* tile_b = tile ? TileB(p, transposed_b) : nullptr;
  const int64_t tile_ldb = p.trans_b ? p.n : p.ldb;
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kGemmBlock;
    const int64_t size = std::min(kGemmBlock, extent - begin);
    if (tile) {
      // A(m, i) = a[m * lda + i], or a[i * lda + m] when A is stored transposed.
      const float* a = p.trans_a ? p.a + begin : p.a + begin * p.lda;
      TileGemm(/*accumulate=*/p.beta != 0.0f, size, p.n, p.k, a, p.trans_a ? 1 : p.lda,
               p.trans_a ? p.lda : 1, tile_b, tile_ldb, p.c + begin * p.ldc, p.ldc);
    } else if (split_rows) {
      BlockGemm(p, begin, size, 0, p.n);
    } else {
      BlockGemm(p, 0, p.m, begin, size);
    }
  }
}

}  // namespace qtrain::kernels::cpu
